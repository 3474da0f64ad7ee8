"""Decisions of the native aiomysql pool (no I/O here, apart from arming the watchdog).

One :class:`MyRules` per pool holds the settings, the core :class:`Guard` and the pool-wide
marks, and answers what the pool asks: which limit bounds this request (backstop), does this
checkout need a ping or an eviction, what does an error mean for the pool, which drop-in error
to raise. ``pool.py`` only does the I/O.

The same questions as the psycopg pool's ``psycopg_pool/_rules.py``, answered the same way
(validate only past ``validate_idle`` or when suspect, jittered lifetime enforced at checkout,
any disconnect makes older connections suspect, one backstop armed per statement). That
module is not imported: it imports psycopg and psycopg_pool at module level, which a MySQL-only
install does not have. The decisions themselves are the core's (``Guard``, ``decide``).

Per-connection state lives on the connection (``_my_*`` attributes declared on
``GuardedConnection``): created / expires (at connect), returned (None until first returned:
fresh connections are not pinged), mode, txn_end, pinged (keepalive).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Collection
from typing import Any

import pymysql

from poolguard.backends import mysql as my
from poolguard.config.settings import Settings
from poolguard.core.backoff import default_rng
from poolguard.core.breaker import CLOSED
from poolguard.core.deadline import _deadline, current_deadline, effective_timeout
from poolguard.core.disposition import Classification, Disposition, Operation, Position
from poolguard.core.retry import Guard, cannot_connect, error_text, is_testing
from poolguard.errors import (
    AmbiguousResultError,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin,
)
from poolguard.integrations._giveup import error_factory
from poolguard.integrations.backstop import Ticket, watchdog

__all__ = [
    "ARMED",
    "CLEANUP",
    "COMMIT_OF_UNIT",
    "DEFAULT_RETRY_ERRNOS",
    "NORMAL",
    "UNIT_OF_WORK",
    "VALIDATE_TIMEOUT",
    "Evicted",
    "MyRules",
    "classify",
    "make_error",
    "my_dropin",
]

#: Slack added to ``query_timeout`` before the backstop cuts the socket, so that MariaDB's
#: ``max_statement_time`` (which keeps the connection usable) normally fires first.
BACKSTOP_GRACE = 0.5
#: Upper bound of a checkout ping, a keepalive ping and the read of a deferred ROLLBACK.
VALIDATE_TIMEOUT = 1.0
#: Max-lifetime jitter: ``max_lifetime * uniform(1 - JITTER, 1)`` (as the psycopg pool).
LIFETIME_JITTER = 0.05

#: 1213 deadlock, 1205 lock wait timeout: the unit is re-run (see backends/mysql.py).
DEFAULT_RETRY_ERRNOS = frozenset(my.RETRY_TRANSACTION_ERRNOS)
UNIT_OF_WORK = Operation(Position.LATER, unit_of_work=True)
COMMIT_OF_UNIT = Operation(Position.COMMIT, unit_of_work=True)
_STATEMENT_OPS = {
    True: Operation(Position.AUTOCOMMIT, idempotent=True),
    False: Operation(Position.AUTOCOMMIT, idempotent=False),
}

# How a connection's requests are bounded (``conn._my_mode``).
NORMAL = 0  # each request arms the backstop when a limit applies
ARMED = 1  # an outer operation armed one backstop for all its requests
CLEANUP = 2  # a ROLLBACK / ping of the pool itself: bounded by VALIDATE_TIMEOUT only

Limit = tuple[float, type[PoolguardError], str]
Armed = tuple[Ticket, Limit]


def my_dropin(
    base: type[PoolguardError],
    message: str,
    *,
    orig: BaseException | None = None,
    attempts: int = 0,
    history: object = (),
    hint: str | None = None,
) -> PoolguardError:
    """``base`` that is also ``pymysql.err.OperationalError`` (what aiomysql users catch:
    ``aiomysql.OperationalError`` is PyMySQL's class)."""
    del orig  # the driver error is chained by the caller (``raise ... from``)
    return dropin(
        base,
        pymysql.err.OperationalError,
        message,
        attempts=attempts,
        history=history,  # type: ignore[arg-type]
        hint=hint,
    )


def as_dropin(exc: PoolguardError) -> PoolguardError:
    """A bare poolguard error (deadline spent, breaker open) as its PyMySQL drop-in twin."""
    if isinstance(exc, pymysql.err.MySQLError):
        return exc  # type: ignore[no-any-return]
    return my_dropin(
        type(exc), exc.message, attempts=exc.attempts, history=exc.history, hint=exc.hint
    )


make_error = error_factory(
    my_dropin,
    as_dropin=as_dropin,
    driver_error=my.driver_error,
    ambiguous_hint="make it idempotent (a unique key on a request id) and pass idempotent=True,"
    " or check before re-running",
)


class Evicted(Exception):
    """A checkout found the connection past its lifetime / idle limit (it is closed)."""


class DeadlineSpent(Exception):
    """The caller's deadline ended before a checkout ping could run."""


def classify(exc: BaseException) -> Classification:
    """MySQL's classification (``backends/mysql.py``); a checkout timeout is final."""
    if isinstance(exc, DeadlineSpent):
        return Classification(Disposition.FAIL, "deadline")
    return my.classify(exc)


@dataclasses.dataclass
class MyRules:
    """Settings, Guard and pool-wide marks of one native aiomysql pool."""

    settings: Settings
    guard: Guard
    redacted_url: str
    suspect_before: float = 0.0
    """Monotonic: connections created before it are pinged at their next checkout."""
    server_version: str = ""
    last_connect_error: BaseException | None = None
    query_limit: Limit | None = None
    cleanup_limit: Limit = (VALIDATE_TIMEOUT, QueryTimeout, "validation timeout")
    quiet_idle: float = dataclasses.field(init=False)
    """Idle time below which a checkout has nothing to check."""
    lent: Callable[[], object] = dataclasses.field(init=False)
    given_back: Callable[[], object] = dataclasses.field(init=False)
    _unit_guards: dict[Any, Guard] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lent = self.guard.stats.counter("checkouts")
        self.given_back = self.guard.stats.counter("checkins")
        s = self.settings
        max_idle = s.max_idle or float("inf")
        validate = float("inf") if s.validate_idle is None else s.validate_idle
        self.quiet_idle = min(max_idle, validate)
        q = s.query_timeout
        self.query_limit = (q + BACKSTOP_GRACE, QueryTimeout, "query timeout") if q else None

    @property
    def name(self) -> str:
        return self.guard.name

    # -- backstop -------------------------------------------------------------------------------
    def limit(self, conn: Any) -> Limit | None:
        """The tightest bound on one request: query timeout, deadline, transaction timeout."""
        if conn._my_mode == CLEANUP:
            return self.cleanup_limit
        best = self.query_limit
        at = _deadline.get()
        end = conn._my_txn_end
        if at is None and end is None:
            return best
        now = time.monotonic()
        if at is not None and (best is None or at - now < best[0]):
            best = (at - now, QueryTimeout, "deadline")
        if end is not None and (best is None or end - now < best[0]):
            best = (end - now, TransactionTimeout, "transaction timeout")
        return best

    def arm(self, conn: Any, limit: Limit | None = None) -> Armed | None:
        """Arm the watchdog on ``conn``'s socket; raise at once when the bound is spent."""
        if limit is None:
            limit = self.limit(conn)
            if limit is None:
                return None
        if limit[0] <= 0:
            raise my_dropin(
                limit[1],
                f"{self.name}: {limit[2]} exceeded before the statement started",
                hint="raise the poolguard.deadline() budget or make the work shorter",
            )
        fd = my.socket_fileno(conn)
        if fd is None:
            return None  # closed: the request fails at once on its own
        return watchdog().arm(fd, limit[0]), limit

    def failed(self, conn: Any, armed: Armed | None, exc: Exception) -> Exception:
        """The error to raise after a request failed (a cut becomes a timeout)."""
        if armed is not None and not armed[0].cancel():
            return self.cut(conn, armed[1], exc)
        if self.observe(exc):
            # aiomysql closes on EOF, not on an error packet that ends the session (1927
            # KILL, 1053 shutdown): never hand such a connection to the next caller.
            conn.close()
        return exc

    def succeeded(self, conn: Any, armed: Armed | None) -> None:
        if armed is not None and not armed[0].cancel():
            raise self.cut(conn, armed[1], None)  # the reply raced the watchdog: cut anyway

    def cut(self, conn: Any, limit: Limit, exc: BaseException | None) -> PoolguardError:
        seconds, cls, what = limit
        self.guard.stats.evict("timeout")
        conn.close()  # the pool sees a closed connection and frees its slot
        err = my_dropin(
            cls,
            f"{self.name}: no reply within {max(seconds, 0):.2f}s ({what}); the connection was"
            " cut and discarded (the server may be frozen, or the network down)",
            hint=f"raise the {what} if the work is legitimately slow",
        )
        err.poolguard_cut = True  # type: ignore[attr-defined]
        return err

    def observe(self, exc: BaseException) -> bool:
        """Note a disconnect (True); any disconnect makes every older connection suspect
        (pinged at its next checkout): what closed this one has usually closed its siblings,
        whatever scope the error's classification names (as the psycopg pool)."""
        c = classify(exc)
        if c.disconnect:
            self.guard.stats.disconnect(c.reason, exc)
            self.suspect_before = time.monotonic()
        return c.disconnect

    # -- connections ----------------------------------------------------------------------------
    def connected(self, conn: Any) -> None:
        self.guard.stats.incr("connects")
        self.last_connect_error = None
        self.guard.breaker.record_success()
        self.server_version = str(conn.get_server_info())
        conn._my_created = now = time.monotonic()
        conn._my_expires = now + self.lifetime()
        conn._my_returned = None
        conn._my_rules = self

    def lifetime(self) -> float:
        """A jittered max lifetime for one new connection (so they do not expire together)."""
        if not self.settings.max_lifetime:
            return float("inf")
        return self.settings.max_lifetime * random.uniform(1.0 - LIFETIME_JITTER, 1.0)

    def connect_failed(self, exc: BaseException, *, breaker: bool) -> None:
        self.guard.stats.incr("connect_failures")
        self.last_connect_error = exc
        if breaker:  # a caller outside the retry loop (whose loop records it itself)
            self.guard.breaker.record_failure()
            self.guard.last_connect_error = error_text(exc)

    def reconnect_delay(
        self, exc: BaseException, failures: int, wait: float | None, started: float
    ) -> float | None:
        """Seconds before ``acquire()`` tries to connect again, None to raise ``exc``: only
        after a connect failure, while the breaker stays closed and the next try fits in the
        acquire wait (or, without one, the retry window)."""
        if isinstance(exc, PoolguardError) or not classify(exc).connect_phase:
            return None
        if self.guard.breaker._state is not CLOSED:
            return None  # open: fail fast (the next acquire says so)
        delay = 0.0 if is_testing() else self.guard.policy.backoff.delay(failures, default_rng)
        window = wait if wait is not None else self.guard.policy.timeout
        if window is None or time.monotonic() + delay - started >= window:
            return None
        return delay

    def setup_sql(self) -> str | None:
        return my.session_setup_sql(self.settings, self.server_version)

    # -- checkout -------------------------------------------------------------------------------
    def checkout(self, conn: Any) -> float | None:
        """Seconds a validation ping may take, None when no ping is needed; raises
        :class:`Evicted` (closed by the server, lifetime, idle) or :class:`DeadlineSpent`."""
        now = time.monotonic()
        returned = conn._my_returned
        suspect = conn._my_created < self.suspect_before
        reader = conn._reader
        if reader is None or reader.at_eof() or reader.exception() is not None:
            # aiomysql's own free check: the event loop already saw the server close it (a
            # KILL, wait_timeout, a restart), so no round trip is needed to know. What closed
            # it has usually closed its siblings: they are checked the same way, for free.
            self.guard.stats.disconnect("closed_by_server")
            self.evict(conn, "disconnect", now, returned)
        if returned is None and not suspect:
            return None  # fresh: it just proved the server answers
        if not suspect and now - returned < self.quiet_idle and now < conn._my_expires:
            return None  # the common case, in one test
        if conn._my_expires <= now:
            self.evict(conn, "lifetime", now, returned)
        s = self.settings
        idle = 0.0 if returned is None else now - returned
        if s.max_idle and idle >= s.max_idle:
            self.evict(conn, "idle", now, returned)
        if not suspect and (s.validate_idle is None or idle < s.validate_idle):
            return None
        at = current_deadline()
        if at is None:
            return VALIDATE_TIMEOUT
        if at - now <= 0:
            raise DeadlineSpent()
        return min(VALIDATE_TIMEOUT, at - now)

    def evict(self, conn: Any, reason: str, now: float, returned: float | None) -> None:
        idle = 0.0 if returned is None else now - returned
        self.guard.stats.evict(reason, now - conn._my_created, idle)
        conn.close()
        raise Evicted(reason)

    def validation_failed(self, conn: Any, exc: BaseException) -> None:
        now = time.monotonic()
        stats = self.guard.stats
        stats.incr("validation_failures")
        returned = conn._my_returned
        stats.evict(
            "validation", now - conn._my_created, 0.0 if returned is None else now - returned
        )
        conn.close()
        self.observe(exc)

    # -- acquiring ------------------------------------------------------------------------------
    def acquire_wait(self, timeout: float | None) -> float | None:
        """``min(timeout or acquire_timeout, deadline)`` for one checkout (None: unbounded)."""
        configured = timeout if timeout is not None else self.settings.acquire_timeout
        if _deadline.get() is None:
            return configured or None
        return effective_timeout(
            configured, what=f"{self.name} connection checkout", error=_POOL_TIMEOUT
        )

    def breaker_check(self) -> None:
        breaker = self.guard.breaker
        if breaker._state is CLOSED or breaker.failures is None:
            return
        try:
            breaker.before_call()
        except PoolguardError as exc:
            g = self.guard
            g.stats.incr("circuit_open_rejections")
            last = self.last_connect_error
            message, hint = cannot_connect(
                self.name,
                g.target,
                error_text(last) if last is not None else g.last_connect_error,
                attempts=0,
                elapsed=0.0,
                ending=f"circuit breaker open after {breaker.failures} failed connects,"
                f" failing fast; next probe in {breaker.admits_in():.1f}s",
                env_prefix=g.env_prefix,
            )
            raise my_dropin(type(exc), message, hint=hint) from last

    def pool_timeout(
        self, waited: float, size: int, maxsize: int, idle: int, waiting: int
    ) -> PoolguardError:
        self.guard.stats.acquire_timeout(waited)
        sizes = f"pool size {size}/{maxsize}, {idle} idle, {waiting} waiting"
        return my_dropin(
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
            idempotent = isinstance(query, str) and my.is_idempotent(query)
        return _STATEMENT_OPS[bool(idempotent)]

    def unit_guard(self, retry_on: Collection[int], attempts: int | None) -> Guard:
        """The pool's Guard seen through one call's retryable errnos and attempt count."""
        key = (frozenset(retry_on), attempts)
        cached = self._unit_guards.get(key)
        if cached is not None:
            return cached
        allowed = frozenset(retry_on)

        def unit_classify(exc: BaseException) -> Classification:
            c = classify(exc)
            if c.disposition is Disposition.RETRY_TRANSACTION and my.errno_of(exc) not in allowed:
                return Classification(Disposition.FAIL, c.reason)
            return c

        guard = self.guard.derive(unit_classify, attempts=attempts)
        self._unit_guards[key] = guard
        return guard

    def begin_unit(self, conn: Any) -> None:
        t = self.settings.transaction_timeout
        conn._my_txn_end = None if not t else time.monotonic() + t

    def commit_failed(self, exc: Exception) -> Exception:
        """A cut during COMMIT: the reply was lost, the COMMIT may have been applied."""
        if not getattr(exc, "poolguard_cut", False):
            return exc  # the retry loop decides (decide(): lost reply -> AMBIGUOUS)
        self.guard.stats.ambiguous(None, "commit_cut", exc, disposition="ambiguous")
        return my_dropin(
            AmbiguousResultError,
            f"{self.name}: the COMMIT was sent but no reply came before the deadline: the"
            " transaction may or may not have been applied",
            hint="check on the server before re-running it, or make the unit idempotent",
        )

    @property
    def checked_out(self) -> int:
        stats = self.guard.stats
        return stats.count("checkouts") - stats.count("checkins")


_POOL_TIMEOUT = type(my_dropin(PoolTimeout, ""))
