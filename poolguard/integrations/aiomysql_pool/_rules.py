"""Decisions of the native aiomysql pool (no I/O here, apart from arming the watchdog).

One :class:`MyRules` per pool holds the settings, the core :class:`Guard` and the pool-wide
marks, and answers what the pool asks: which limit bounds this request (backstop), does this
checkout need a ping or an eviction, what does an error mean for the pool, which drop-in error
to raise. ``pool.py`` only does the I/O.

The same questions as the psycopg pool's, answered by the same code: :class:`MyRules`
subclasses ``integrations/_native_rules.py``'s ``NativeRules`` (which imports no driver: a
MySQL-only install has no psycopg) and adds what only PyMySQL / MySQL know (classification,
drop-in classes, the socket, EOF at checkout, setup SQL, reconnect delay). The decisions
themselves are the core's (``Guard``, ``decide``).

Per-connection state lives on the connection (``_my_*`` attributes declared on
``GuardedConnection``): created / expires (at connect), returned (None until first returned:
fresh connections are not pinged), mode, txn_end, pinged (keepalive).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import pymysql

from poolguard.backends import mysql as my
from poolguard.core.backoff import default_rng
from poolguard.core.breaker import CLOSED
from poolguard.core.deadline import _deadline
from poolguard.core.disposition import Classification, Disposition
from poolguard.core.retry import is_testing
from poolguard.errors import AmbiguousResultError, PoolguardError, PoolTimeout, QueryTimeout, dropin
from poolguard.integrations._giveup import error_factory
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
    Limit,
    NativeRules,
)

__all__ = [
    "ARMED",
    "BACKSTOP_GRACE",
    "CLEANUP",
    "COMMIT_OF_UNIT",
    "DEFAULT_RETRY_ERRNOS",
    "NORMAL",
    "UNIT_OF_WORK",
    "VALIDATE_TIMEOUT",
    "Armed",
    "DeadlineSpent",
    "Evicted",
    "Limit",
    "MyRules",
    "classify",
    "make_error",
    "my_dropin",
]

#: 1213 deadlock, 1205 lock wait timeout: the unit is re-run (see backends/mysql.py).
DEFAULT_RETRY_ERRNOS = frozenset(my.RETRY_TRANSACTION_ERRNOS)


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


_POOL_TIMEOUT = type(my_dropin(PoolTimeout, ""))


def classify(exc: BaseException) -> Classification:
    """MySQL's classification (``backends/mysql.py``); a checkout timeout is final."""
    if isinstance(exc, DeadlineSpent):
        return Classification(Disposition.FAIL, "deadline")
    return my.classify(exc)


@dataclasses.dataclass
class MyRules(NativeRules):
    """Settings, Guard and pool-wide marks of one native aiomysql pool (the decisions are
    :class:`NativeRules`'; what only PyMySQL / MySQL know is here)."""

    server_version: str = ""
    # The pool's own ROLLBACK / ping: bounded by VALIDATE_TIMEOUT only.
    cleanup_limit: Limit = (VALIDATE_TIMEOUT, QueryTimeout, "validation timeout")

    STATE_PREFIX: ClassVar[str] = "_my_"
    POOL_TIMEOUT: ClassVar[type[PoolguardError]] = _POOL_TIMEOUT
    # Its own cuts mark the older connections suspect too, as this pool always did (its cut
    # errors read as PyMySQL's connection_closed); aligning it with the psycopg pool would be
    # a behaviour change of its own.
    CUT_SPARES_SIBLINGS: ClassVar[bool] = False

    # -- what only PyMySQL / MySQL know ---------------------------------------------------------
    classify = staticmethod(classify)
    dropin = staticmethod(my_dropin)
    is_idempotent = staticmethod(my.is_idempotent)

    def socket_of(self, conn: Any) -> int | None:
        return my.socket_fileno(conn)

    def discard(self, conn: Any) -> None:
        conn.close()  # the pool sees a closed connection and frees its slot

    def session_ended(self, conn: Any) -> None:
        # aiomysql closes on EOF, not on an error packet that ends the session (1927 KILL,
        # 1053 shutdown): never hand such a connection to the next caller.
        conn.close()

    def server_version_of(self, conn: Any) -> str:
        return str(conn.get_server_info())

    def may_rerun(self, exc: BaseException, allowed: frozenset[Any]) -> bool:
        return my.errno_of(exc) in allowed

    # -- connections ----------------------------------------------------------------------------
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
        """:meth:`NativeRules.checkout`, after evicting a connection the server closed."""
        reader = conn._reader
        if reader is None or reader.at_eof() or reader.exception() is not None:
            # aiomysql's own free check: the event loop already saw the server close it (a
            # KILL, wait_timeout, a restart), so no round trip is needed to know. What closed
            # it has usually closed its siblings: they are checked the same way, for free.
            self.guard.stats.disconnect("closed_by_server")
            self.evict(conn, "disconnect", *self.age_idle(conn))
        return super().checkout(conn)

    # -- acquiring ------------------------------------------------------------------------------
    def acquire_wait(self, timeout: float | None) -> float | None:
        """``min(timeout or acquire_timeout, deadline)`` for one checkout (None: unbounded)."""
        if _deadline.get() is None:
            return (timeout if timeout is not None else self.settings.acquire_timeout) or None
        return self.deadline_wait(timeout)

    def pool_timeout(
        self, waited: float, size: int, maxsize: int, idle: int, waiting: int
    ) -> PoolguardError:
        self.guard.stats.acquire_timeout(waited)
        return self.pool_busy(waited, f"pool size {size}/{maxsize}, {idle} idle, {waiting} waiting")

    # -- statements and units of work -----------------------------------------------------------
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
