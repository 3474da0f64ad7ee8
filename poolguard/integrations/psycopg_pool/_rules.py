"""Decisions shared by the sync and async native pools (no I/O here, apart from the watchdog).

One :class:`PoolRules` per pool holds the settings, the core :class:`Guard` and the pool-wide
marks, and answers the questions both pools ask: which limit bounds this wait on the socket
(backstop), does this checkout need a ping, what does this error mean for the pool, which
drop-in error to raise. The two pool classes only do the I/O, each in its own colour.

Per-connection state lives in attributes poolguard sets on the connection object (declared on
the connection classes): ``_pg_rules``, ``_pg_mode``, ``_pg_created`` and ``_pg_expires`` (set
when the connection is configured), ``_pg_returned`` (None while the connection was never handed
out: fresh connections are not pinged), ``_pg_txn_end`` and ``_pg_isolation``. poolguard
reads none of psycopg_pool's private connection attributes (``_created_at`` only exists from
psycopg_pool 3.3, ``_expire_at`` is psycopg_pool's business); a connection to discard is closed,
which every psycopg_pool version replaces when it comes back.

The pools are ``pool_async.py`` / ``pool.py``, the connections ``connection.py``; the server
knowledge behind these answers is ``poolguard/backends/postgres.py``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Collection
from typing import Any

import psycopg_pool
from psycopg.pq import TransactionStatus

from poolguard.backends import postgres as pg
from poolguard.config.settings import Settings
from poolguard.core.backoff import Backoff, default_rng
from poolguard.core.breaker import CLOSED
from poolguard.core.deadline import _deadline, current_deadline, effective_timeout
from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    Position,
    decide,
)
from poolguard.core.retry import Guard, cannot_connect, error_text
from poolguard.errors import (
    AmbiguousResultError,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin_class,
)
from poolguard.integrations._live import live_gauges
from poolguard.integrations.backstop import Ticket, watchdog
from poolguard.integrations.psycopg_pool._errors import pg_dropin

#: Raised when the deadline is spent before a checkout: also psycopg_pool's PoolTimeout.
_POOL_TIMEOUT = dropin_class(PoolTimeout, psycopg_pool.PoolTimeout)

__all__ = [
    "ARMED",
    "BACKSTOP_GRACE",
    "CLEANUP",
    "COMMIT_OF_UNIT",
    "DEFAULT_RETRY_SQLSTATES",
    "NORMAL",
    "UNIT_OF_WORK",
    "VALIDATE_TIMEOUT",
    "Armed",
    "Evicted",
    "PoolRules",
]

#: Slack added to ``query_timeout`` before the client backstop cuts the socket, so that the
#: server's ``statement_timeout`` (which keeps the connection usable) normally fires first.
BACKSTOP_GRACE = 0.5
#: Upper bound of the checkout validation ping (also bounded by the caller's deadline).
VALIDATE_TIMEOUT = 1.0
#: psycopg_pool wants numbers where poolguard settings may say "off".
NO_ACQUIRE_TIMEOUT = 1e9
NO_MAX_IDLE = 86400.0  # also the period of psycopg_pool's ShrinkPool task: keep it finite
#: Max-lifetime jitter at checkout: ``max_lifetime * uniform(1 - JITTER, 1)``, the same -5%..0
#: psycopg_pool applies to its own expiry on return (each keeps its own draw).
LIFETIME_JITTER = 0.05

DEFAULT_RETRY_SQLSTATES = frozenset(pg.RETRY_TRANSACTION_SQLSTATES)
#: A unit of work (``pool.transaction``): statements are never retried alone, the unit is.
UNIT_OF_WORK = Operation(Position.LATER, unit_of_work=True)
COMMIT_OF_UNIT = Operation(Position.COMMIT, unit_of_work=True)
_STATEMENT_OPS = {
    True: Operation(Position.AUTOCOMMIT, idempotent=True),
    False: Operation(Position.AUTOCOMMIT, idempotent=False),
}

# How a connection's waits are bounded (``conn._pg_mode``).
NORMAL = 0  # each wait on the socket arms the backstop (query timeout, deadline, txn timeout)
ARMED = 1  # an outer operation armed one backstop for all its waits (a guarded statement)
CLEANUP = 2  # a ROLLBACK on return: bounded even when the caller's deadline is spent

Limit = tuple[float, type[PoolguardError], str]
Armed = tuple[Ticket, Limit]

_POOL_ERRORS = (psycopg_pool.PoolClosed, psycopg_pool.TooManyRequests)

# Resolving a lost COMMIT (``transaction(..., resolve_ambiguous=True)``, PostgreSQL >= 13).
# With the server's timeline: one on another timeline (a failover in between) cannot be trusted
# with the xid (see integrations/sqlalchemy/transaction.py), so the outcome stays ambiguous.
TIMELINE_SQL = "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
XID_SQL = f"SELECT txid_current(), pg_backend_pid(), {TIMELINE_SQL}"
STATUS_SQL = f"SELECT pg_xact_status(%s::text::xid8), {TIMELINE_SQL}"
TERMINATE_SQL = "SELECT pg_terminate_backend(%s)"
#: Pause between pg_xact_status polls while the old backend goes away.
RESOLVE_POLL = 0.05
#: Give up resolving after this long (also bounded by the caller's deadline).
RESOLVE_TIMEOUT = 5.0


def _all_timeouts(settings: Settings, server_version: int) -> dict[str, int]:
    """Every server timeout GUC poolguard sets, off ones as 0 (after a reconfiguration)."""
    gucs = dict.fromkeys(("statement_timeout", "lock_timeout"), 0)
    gucs["idle_in_transaction_session_timeout"] = 0
    if server_version >= pg._TRANSACTION_TIMEOUT_VERSION:
        gucs["transaction_timeout"] = 0
    return {
        **gucs,
        **pg.server_timeouts(settings),
        **pg._versioned_timeouts(settings, server_version),
    }


class CommitAborted(Exception):
    """Resolution found the lost COMMIT's transaction aborted: the unit may run again."""


class Evicted(Exception):
    """Raised by the checkout check: psycopg_pool then discards the connection."""


class _DeadlineSpent(Exception):
    """The caller's deadline ended before a checkout validation could run."""


def classify(exc: BaseException) -> Classification:
    """PostgreSQL's classification, plus psycopg_pool's own errors (final: not the server)."""
    if isinstance(exc, _POOL_ERRORS):
        return Classification(Disposition.FAIL, type(exc).__name__.lower())
    if isinstance(exc, CommitAborted):
        return Classification(Disposition.RETRY_TRANSACTION, "commit_lost_aborted")
    return pg.classify(exc)


class Reconnect:
    """psycopg_pool's reconnect schedule, with poolguard's backoff instead of 1 s, 2 s, 4 s...

    psycopg_pool waits a full second before the first reconnect and doubles from there, so a
    pool emptied by a 2 s restart could stay empty for 3-7 s after the server came back.

    It quacks like psycopg_pool's private attempt object (``delay``, ``update_delay``,
    ``time_to_give_up``) rather than subclassing it: that class was renamed once already
    (``ConnectionAttempt`` in 3.2.0, ``AttemptWithBackoff`` from 3.2.1).
    """

    def __init__(self, *, timeout: float, backoff: Backoff) -> None:
        self.timeout = timeout
        self.delay = 0.0
        self.give_up_at = 0.0
        self._backoff = backoff
        self._failures = 0

    def update_delay(self, now: float) -> None:
        if self._failures == 0:
            self.give_up_at = now + self.timeout
        self._failures += 1
        delay = self._backoff.delay(self._failures, default_rng)
        self.delay = max(0.0, min(delay, self.give_up_at - now))

    def time_to_give_up(self, now: float) -> bool:
        return self.give_up_at > 0.0 and now >= self.give_up_at


@dataclasses.dataclass
class PoolRules:
    """Settings, Guard and pool-wide marks of one native pool."""

    settings: Settings
    guard: Guard
    pgbouncer: bool
    redacted_url: str
    suspect_before: float = 0.0
    """Monotonic time: connections created before it are validated at their next checkout
    (a disconnect was seen: restart, crash, failover, killed backends)."""
    server_version: int = 0
    last_connect_error: BaseException | None = None
    query_limit: Limit | None = None
    cleanup_limit: Limit = (VALIDATE_TIMEOUT + BACKSTOP_GRACE, QueryTimeout, "rollback timeout")
    lent: Callable[[], object] = dataclasses.field(init=False)
    """Count one checkout (a pre-bound C-level counter: no lock on the hot path)."""
    given_back: Callable[[], object] = dataclasses.field(init=False)
    default_wait: float = dataclasses.field(init=False)
    quiet_idle: float = dataclasses.field(init=False)
    """Idle time below which a checkout has nothing to check (neither ``max_idle`` nor
    ``validate_idle`` reached)."""
    _unit_guards: dict[Any, Guard] = dataclasses.field(default_factory=dict)
    generation: int = 0
    """Live reconfigurations applied (``poolguard.reconfigure``)."""
    recycle_before: float = 0.0
    """Monotonic: connections created before it carry server-side timeouts that were since
    reconfigured; replaced at their next checkout (``suspect_before`` moves too, so that the
    checkout leaves its fast path)."""
    pool_ref: Callable[[], Any] | None = None
    """Weak reference to the psycopg_pool pool these rules serve (``poolguard.reconfigure``)."""

    def __post_init__(self) -> None:
        self.lent = self.guard.stats.counter("checkouts")
        self.given_back = self.guard.stats.counter("checkins")
        self._derive()

    def _derive(self) -> None:
        """The values read per checkout / statement, computed once from ``settings``."""
        s = self.settings
        self.default_wait = s.acquire_timeout or NO_ACQUIRE_TIMEOUT
        max_idle = s.max_idle or float("inf")
        self.quiet_idle = min(
            max_idle, float("inf") if s.validate_idle is None else s.validate_idle
        )
        q = s.query_timeout
        rollback = (q or VALIDATE_TIMEOUT) + BACKSTOP_GRACE
        self.query_limit = (q + BACKSTOP_GRACE, QueryTimeout, "query timeout") if q else None
        self.cleanup_limit = (rollback, QueryTimeout, "rollback timeout")

    def reconfigure(self, new: Settings, changed: frozenset[str]) -> None:
        """Adopt ``new`` (validated by ``poolguard.reconfigure``). ``pool`` is the
        psycopg_pool object: its own copies (connect kwargs, timeout, lifetime, idle limit)
        are replaced too, each by a new value (never mutated in place)."""
        from poolguard.integrations._live import SESSION_FIELDS, rewrite_params

        pool = None if self.pool_ref is None else self.pool_ref()
        if pool is not None:
            # pool.kwargs hold the connect parameters of the settings in force until now.
            old, current = pg.connect_params(self.settings), pg.connect_params(new)
            pool.kwargs = rewrite_params(pool.kwargs, old, current)
            pool.timeout = new.acquire_timeout or NO_ACQUIRE_TIMEOUT
            pool.max_lifetime = new.max_lifetime or float("inf")
            pool.max_idle = new.max_idle or NO_MAX_IDLE
        self.guard.reconfigure(new)
        self.settings = new
        self._derive()
        if changed & SESSION_FIELDS:
            now = time.monotonic()
            self.recycle_before = now
            self.suspect_before = max(self.suspect_before, now)
        if "keepalive" in changed and pool is not None:
            pool.keepalive_reconfigured()  # watched (or not) now, not at the next connect

    @property
    def name(self) -> str:
        return self.guard.name

    # -- backstop -------------------------------------------------------------------------------
    def limit(self, conn: Any) -> Limit | None:
        """The tightest bound on one wait of ``conn``: query timeout, deadline, txn timeout."""
        if conn._pg_mode == CLEANUP:
            return self.cleanup_limit
        best = self.query_limit
        at = current_deadline()
        end = conn._pg_txn_end
        if at is None and end is None:
            return best
        now = time.monotonic()
        if at is not None and (best is None or at - now < best[0]):
            best = (at - now, QueryTimeout, "deadline")
        if end is not None and (best is None or end - now < best[0]):
            best = (end - now, TransactionTimeout, "transaction timeout")
        return best

    def arm(self, conn: Any) -> Armed | None:
        """Arm the watchdog on ``conn``'s socket; raise at once when the bound is spent."""
        limit = self.limit(conn)
        if limit is None:
            return None
        if limit[0] <= 0:
            raise pg_dropin(
                limit[1],
                f"{self.name}: {limit[2]} exceeded before the statement started",
                hint="raise the poolguard.deadline() budget or make the work shorter",
            )
        return watchdog().arm(conn.pgconn.socket, limit[0]), limit

    def failed(
        self, conn: Any, armed: Armed | None, exc: Exception, *, observe: bool = True
    ) -> Exception:
        """The error to raise after a wait failed (a cut becomes a timeout).

        ``observe=False`` for an outer operation whose inner waits already counted the error
        (they leave the suspect mark to it: only it knows whether its watchdog cut the socket).
        """
        if armed is not None and not armed[0].cancel():
            return self.cut(conn, armed[1], exc)
        self.observe(exc, count=observe)
        return exc

    def succeeded(self, conn: Any, armed: Armed | None) -> None:
        if armed is not None and not armed[0].cancel():
            # The reply came in just as the watchdog fired: the socket is cut all the same.
            raise self.cut(conn, armed[1], None)

    def cut(self, conn: Any, limit: Limit, exc: BaseException | None) -> PoolguardError:
        seconds, cls, what = limit
        self.guard.stats.evict("timeout")
        try:
            conn.pgconn.finish()  # the pool sees a closed connection and replaces it
        except Exception:  # pragma: no cover - finishing a cut socket does not fail
            pass
        err = pg_dropin(
            cls,
            f"{self.name}: no reply within {max(seconds, 0):.2f}s ({what}); the connection was"
            " cut and discarded (the server may be frozen, or the network down)",
            orig=exc,
            hint=f"raise the {what} if the work is legitimately slow",
        )
        err.poolguard_cut = True  # type: ignore[attr-defined]
        return err

    def observe(self, exc: BaseException, *, count: bool = True, mark: bool = True) -> None:
        """Note a disconnect (``count``); any disconnect makes every older connection suspect
        (``mark``), unless poolguard's own backstop cut it.

        Not only POOL-scope ones: a crashed or killed server often shows up as libpq's bare
        EOF ("consuming input failed", "server closed the connection unexpectedly": CONNECTION
        scope) rather than 57P01/57P02, and what killed this connection has usually killed
        its idle siblings. Unmarked, each retry drew the next dead idle connection (3 attempts
        spent on 3 dead connections after a primary crash). Suspect means "pinged at the next
        checkout", not dropped, as the SQLAlchemy integration does. A backstop cut (a slow or
        frozen server) says nothing the sibling's own query timeout would not: not marked,
        as SQLAlchemy's (a ping of each sibling at a frozen server would only add waits).
        """
        c = classify(exc)
        if not c.disconnect:
            return
        if count:
            self.guard.stats.disconnect(c.reason, exc)
        if mark and not getattr(exc, "poolguard_cut", False):
            self.suspect_before = time.monotonic()

    # -- checkout -------------------------------------------------------------------------------
    def checkout(self, conn: Any) -> float | None:
        """Seconds the validation ping may take, None when no ping is needed; raises
        :class:`Evicted` (lifetime, idle) or ``_DeadlineSpent``."""
        now = time.monotonic()
        returned = conn._pg_returned
        suspect = conn._pg_created < self.suspect_before
        if returned is None and not suspect:
            return None  # fresh: it just proved the server answers
        if not suspect and now - returned < self.quiet_idle and now < conn._pg_expires:
            return None  # the common case, told in one test (the rules below agree)
        age = now - conn._pg_created
        idle = 0.0 if returned is None else now - returned
        if suspect and conn._pg_created < self.recycle_before:
            # Opened with server timeouts poolguard.reconfigure() changed since.
            self.evict(conn, "reconfigured", age, idle)
        if conn._pg_expires <= now:
            self.evict(conn, "lifetime", age, idle)
        s = self.settings
        if s.max_idle and idle >= s.max_idle:
            self.evict(conn, "idle", age, idle)
        if not suspect and (s.validate_idle is None or idle < s.validate_idle):
            return None
        at = current_deadline()
        if at is None:
            return VALIDATE_TIMEOUT
        if at - now <= 0:
            raise _DeadlineSpent()
        return min(VALIDATE_TIMEOUT, at - now)

    def evict(self, conn: Any, reason: str, age: float, idle: float) -> None:
        self.guard.stats.evict(reason, age, idle)
        discard(conn)
        raise Evicted(reason)

    def validation_failed(self, conn: Any, exc: Exception) -> None:
        now = time.monotonic()
        stats = self.guard.stats
        stats.incr("validation_failures")
        idle = 0.0 if conn._pg_returned is None else now - conn._pg_returned
        stats.evict("validation", now - conn._pg_created, idle)
        discard(conn)
        self.observe(exc)

    # -- connecting -----------------------------------------------------------------------------
    def connected(self, conn: Any) -> None:
        self.guard.stats.incr("connects")
        self.last_connect_error = None
        self.guard.breaker.record_success()
        self.server_version = conn.info.server_version
        conn._pg_created = now = time.monotonic()
        conn._pg_expires = now + self.lifetime()
        conn._pg_rules = self
        conn._pg_mode = NORMAL
        conn._pg_returned = None
        conn._pg_txn_end = None

    def lifetime(self) -> float:
        """A jittered max lifetime for one new connection (so they do not expire together)."""
        if not self.settings.max_lifetime:
            return float("inf")
        return self.settings.max_lifetime * random.uniform(1.0 - LIFETIME_JITTER, 1.0)

    def connect_failed(self, exc: BaseException) -> None:
        self.guard.stats.incr("connect_failures")
        self.last_connect_error = exc

    def reconnect_attempt(self, timeout: float) -> Reconnect:
        p = self.guard.policy.backoff
        # "equal" jitter: never much shorter than the ceiling, so a dead server is not polled
        # in a tight loop by every empty slot at once.
        backoff = Backoff(initial=p.initial, max=p.max, multiplier=p.multiplier, jitter="equal")
        return Reconnect(timeout=timeout, backoff=backoff)

    def setup_sql(self) -> str | None:
        if self.recycle_before and not self.pgbouncer:
            # poolguard.reconfigure() changed server timeouts: set every one explicitly (off is
            # 0), so that a connect which read the previous parameters still gets today's.
            return pg._set_config_sql(
                _all_timeouts(self.settings, self.server_version), local=False
            )
        return pg.session_setup_sql(self.settings, self.server_version)

    def local_sql(self) -> str | None:
        """PgBouncer: the timeouts as ``set_config(..., true)`` at each transaction start."""
        if not self.pgbouncer:
            return None
        return pg.local_timeouts_sql(self.settings, self.server_version)

    # -- acquiring ------------------------------------------------------------------------------
    def acquire_wait(self, timeout: float | None) -> float:
        """``min(timeout or acquire_timeout, deadline)`` for one checkout."""
        if _deadline.get() is None:  # the common case, first
            return self.default_wait if timeout is None else timeout
        configured = timeout if timeout is not None else self.settings.acquire_timeout
        bound = effective_timeout(
            configured, what=f"{self.name} connection checkout", error=_POOL_TIMEOUT
        )
        assert bound is not None  # a deadline is set, so the bound is finite
        return bound

    def breaker_check(self) -> None:
        breaker = self.guard.breaker
        if breaker._state is CLOSED or breaker.failures is None:
            return  # admission's own lock-free fast path, without two calls
        try:
            breaker.before_call()
        except PoolguardError as exc:
            g = self.guard
            g.stats.incr("circuit_open_rejections")
            last = self.last_connect_error
            # What cannot be reached and why first; the breaker's verdict after.
            message, hint = cannot_connect(
                self.name,
                g.target,
                error_text(last) if last is not None else g.last_connect_error,
                attempts=0,
                elapsed=0.0,
                ending=f"circuit breaker open after {g.breaker.failures} failed connects,"
                f" failing fast; next probe in {g.breaker.admits_in():.1f}s",
                env_prefix=g.env_prefix,
            )
            raise pg_dropin(type(exc), message, hint=hint) from last

    def pool_timeout(self, waited: float, measures: dict[str, int]) -> PoolguardError:
        """The drop-in PoolTimeout, saying whether the pool is merely busy or cannot connect."""
        self.guard.stats.acquire_timeout(waited)
        sizes = (
            f"pool size {measures.get('pool_size', 0)}/{measures.get('pool_max', 0)},"
            f" {measures.get('pool_available', 0)} idle,"
            f" {measures.get('requests_waiting', 0)} waiting"
        )
        if self.last_connect_error is not None:
            # A checkout that starved while connects fail is a client-visible connect failure:
            # it feeds the breaker (a background reconnect that succeeds closes it again). The
            # headline is what cannot be reached, not the pool's size.
            self.guard.breaker.record_failure()
            failed = self.guard.stats.count("connect_failures")
            p = self.guard.env_prefix
            message, _ = cannot_connect(
                self.name,
                self.guard.target,
                error_text(self.last_connect_error),
                attempts=1,
                elapsed=waited,
                tried=f"waited {waited:.2f}s for a connection",
                ending=f"{failed} connects failed so far; {sizes}",
            )
            hint = (
                f"check that the server is up and reachable from here; {p}ACQUIRE_TIMEOUT"
                f" bounds the wait, {p}CONNECT_TIMEOUT each connect attempt"
            )
            return pg_dropin(PoolTimeout, message, hint=hint)
        return pg_dropin(
            PoolTimeout,
            f"{self.name}: no connection became free within {waited:.2f}s ({sizes})",
            hint="raise POOLGUARD_ACQUIRE_TIMEOUT or POOLGUARD_POOL_SIZE/POOLGUARD_MAX_OVERFLOW,"
            " or hold connections for less time",
        )

    # -- statements and units of work -----------------------------------------------------------
    def statement_op(self, query: Any, idempotent: bool | None) -> Operation:
        if idempotent is None:
            if isinstance(query, bytes):
                query = query.decode("utf-8", "replace")
            idempotent = isinstance(query, str) and pg.is_idempotent(query)
        return _STATEMENT_OPS[bool(idempotent)]

    def ambiguous_commit(self, exc: BaseException) -> PoolguardError:
        c = classify(exc)
        self.guard.stats.ambiguous(None, c.reason, exc, disposition=c.disposition.value)
        return pg_dropin(
            AmbiguousResultError,
            f"{self.name}: the COMMIT was sent but its reply was lost ({c.reason}):"
            " the transaction may or may not have been applied",
            orig=exc,
            hint="check on the server before re-running it, or make the unit idempotent",
        )

    def unit_guard(self, retry_on: Collection[str], attempts: int | None) -> Guard:
        """The pool's Guard seen through one call's retryable SQLSTATEs and attempt count
        (same budget, breaker and stats)."""
        key = (frozenset(retry_on), attempts)
        cached = self._unit_guards.get(key)
        if cached is not None:
            return cached
        allowed = frozenset(retry_on)

        def unit_classify(exc: BaseException) -> Classification:
            c = classify(exc)
            if (
                c.disposition is Disposition.RETRY_TRANSACTION
                and not isinstance(exc, CommitAborted)
                and pg.sqlstate(exc) not in allowed
            ):
                return Classification(Disposition.FAIL, c.reason)
            return c

        guard = self.guard.derive(unit_classify, attempts=attempts)
        self._unit_guards[key] = guard
        return guard

    def begin_unit(self, conn: Any) -> None:
        t = self.settings.transaction_timeout
        conn._pg_txn_end = None if not t else time.monotonic() + t

    @staticmethod
    def outcome_unknown(was_in_transaction: bool, exc: BaseException) -> bool:
        """Did this COMMIT failure lose the reply of a COMMIT that had work to apply?"""
        if not was_in_transaction:
            return False
        if getattr(exc, "poolguard_cut", False):
            return True
        return decide(classify(exc), COMMIT_OF_UNIT) is Action.AMBIGUOUS

    def resolved(self, status: object) -> bool | None:
        """``pg_xact_status``: True committed, False aborted, None still in progress."""
        if status in ("committed", "aborted"):
            self.guard.stats.incr(f"ambiguous_resolved.{status}")
            return status == "committed"
        return None

    def commit_failed(self, conn: Any, was_in_transaction: bool, exc: Exception) -> Exception:
        """A cut during COMMIT of a transaction that did something is an ambiguous result."""
        if was_in_transaction and getattr(exc, "poolguard_cut", False):
            return self.ambiguous_commit(exc)
        return exc

    @staticmethod
    def usable(conn: Any) -> bool:
        return bool(conn.pgconn.transaction_status == TransactionStatus.IDLE)

    @property
    def checked_out(self) -> int:
        stats = self.guard.stats
        return stats.count("checkouts") - stats.count("checkins")

    def record_lent(self, conn: Any) -> None:
        """Note when ``conn`` was handed out, for its use time (only while sampling)."""
        conn._pg_lent = time.monotonic()

    def record_use(self, conn: Any) -> None:
        """Sample how long ``conn`` was out (only called while an exporter samples)."""
        sink = self.guard.stats.sink
        lent = getattr(conn, "_pg_lent", None)
        conn._pg_lent = None
        if sink is not None and lent is not None:
            sink.use.append(time.monotonic() - lent)

    def gauges(self, measures: dict[str, int]) -> dict[str, Any]:
        # psycopg_pool's pool_size also counts connections still being opened.
        return {
            "size": measures.get("pool_size", 0),
            "idle": measures.get("pool_available", 0),
            "checked_out": self.checked_out,
            "waiting": measures.get("requests_waiting", 0),
            "max": measures.get("pool_max", 0),
            # min_size: connections kept open (idle when unused) whatever the load.
            "idle_min": measures.get("pool_min", 0),
            **live_gauges(self.settings, self.generation, self.guard.stats),
            "ambiguous_resolved": {
                k: self.guard.stats.count(f"ambiguous_resolved.{k}")
                for k in ("committed", "aborted")
            },
            "psycopg_pool": measures,
        }


def discard(conn: Any) -> None:
    """Close ``conn`` so that psycopg_pool replaces it when it comes back (public API only: a
    closed connection is discarded by every psycopg_pool version, sync and async)."""
    conn.pgconn.finish()


def is_deadline_spent(exc: BaseException) -> bool:
    return isinstance(exc, _DeadlineSpent)
