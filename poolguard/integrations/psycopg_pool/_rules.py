"""Decisions shared by the sync and async native pools (no I/O here, apart from the watchdog).

One :class:`PoolRules` per pool holds the settings, the core :class:`Guard` and the pool-wide
marks, and answers the questions both pools ask: which limit bounds this wait on the socket
(backstop), does this checkout need a ping, what does this error mean for the pool, which
drop-in error to raise. The two pool classes only do the I/O, each in its own colour. The
decisions the aiomysql pool shares are :class:`NativeRules`' (``integrations/_native_rules.py``,
which imports no driver); this module adds what only psycopg and PostgreSQL know.

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
import time
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg_pool
from psycopg.pq import TransactionStatus

from poolguard.backends import postgres as pg
from poolguard.config.settings import Settings
from poolguard.core.backoff import Backoff, default_rng
from poolguard.core.deadline import _deadline
from poolguard.core.disposition import Action, Classification, Disposition, decide
from poolguard.core.retry import cannot_connect, error_text
from poolguard.errors import (
    AmbiguousResultError,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    dropin_class,
)
from poolguard.integrations._live import live_gauges
from poolguard.integrations._native_rules import (
    ARMED,
    BACKSTOP_GRACE,
    CLEANUP,
    COMMIT_OF_UNIT,
    NORMAL,
    UNIT_OF_WORK,
    VALIDATE_TIMEOUT,
    Armed,
    DeadlineSpent,
    Evicted,
    NativeRules,
)
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

#: psycopg_pool wants numbers where poolguard settings may say "off".
NO_ACQUIRE_TIMEOUT = 1e9
NO_MAX_IDLE = 86400.0  # also the period of psycopg_pool's ShrinkPool task: keep it finite

DEFAULT_RETRY_SQLSTATES = frozenset(pg.RETRY_TRANSACTION_SQLSTATES)

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
class PoolRules(NativeRules):
    """Settings, Guard and pool-wide marks of one native psycopg pool (the decisions are
    :class:`NativeRules`'; what only psycopg / PostgreSQL know is here)."""

    pgbouncer: bool = dataclasses.field(kw_only=True)
    server_version: int = 0
    default_wait: float = dataclasses.field(init=False)
    generation: int = 0
    """Live reconfigurations applied (``poolguard.reconfigure``)."""
    pool_ref: Callable[[], Any] | None = None
    """Weak reference to the psycopg_pool pool these rules serve (``poolguard.reconfigure``).
    ``reconfigure`` moves ``recycle_before`` (and ``suspect_before``, so that the checkout
    leaves its fast path)."""

    STATE_PREFIX: ClassVar[str] = "_pg_"
    POOL_TIMEOUT: ClassVar[type[PoolguardError]] = _POOL_TIMEOUT

    # -- what only psycopg / PostgreSQL know ----------------------------------------------------
    classify = staticmethod(classify)
    dropin = staticmethod(pg_dropin)
    is_idempotent = staticmethod(pg.is_idempotent)

    def socket_of(self, conn: Any) -> int | None:
        return int(conn.pgconn.socket)

    def discard(self, conn: Any) -> None:
        discard(conn)

    def cut_socket(self, conn: Any) -> None:
        try:
            discard(conn)
        except Exception:  # pragma: no cover - finishing a cut socket does not fail
            pass

    def server_version_of(self, conn: Any) -> int:
        return int(conn.info.server_version)

    def may_rerun(self, exc: BaseException, allowed: frozenset[Any]) -> bool:
        # A COMMIT found aborted by its resolution is re-run whatever the call's SQLSTATEs.
        return isinstance(exc, CommitAborted) or pg.sqlstate(exc) in allowed

    # -- settings -------------------------------------------------------------------------------
    def _derive(self) -> None:
        super()._derive()
        s = self.settings
        self.default_wait = s.acquire_timeout or NO_ACQUIRE_TIMEOUT
        rollback = (s.query_timeout or VALIDATE_TIMEOUT) + BACKSTOP_GRACE
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

    # -- connecting -----------------------------------------------------------------------------
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
        bound = self.deadline_wait(timeout)
        assert bound is not None  # a deadline is set, so the bound is finite
        return bound

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
        return self.pool_busy(waited, sizes)

    # -- statements and units of work -----------------------------------------------------------
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
    return isinstance(exc, DeadlineSpent)
