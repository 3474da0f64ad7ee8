"""Driver-neutral decisions of poolguard's native pools (psycopg_pool and aiomysql).

Both pools ask the same questions: which limit bounds this wait on the socket (backstop), does
this checkout need a ping or an eviction, what does an error mean for the pool, which drop-in
error to raise. :class:`NativeRules` answers them once; ``psycopg_pool/_rules.py``
(``PoolRules``) and ``aiomysql_pool/_rules.py`` (``MyRules``) subclass it with what only their
driver knows: the classification, the drop-in error classes, how to find and cut the socket,
the server version, which statements are idempotent, which errors a unit may be re-run on.

This module imports no driver: a MySQL-only install has no psycopg, a PostgreSQL-only one no
PyMySQL.

Per-connection state lives in attributes each pool declares on its own connection class,
under its own prefix (``STATE_PREFIX``: ``_pg_`` or ``_my_``, so that the two pools' code,
tests and debuggers name them as before): ``rules``, ``mode``, ``created`` and ``expires`` (set
at connect), ``returned`` (None while the connection was never handed out: fresh connections
are not pinged) and ``txn_end``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Protocol

from poolguard.config.settings import Settings
from poolguard.core.breaker import CLOSED
from poolguard.core.deadline import _deadline, effective_timeout
from poolguard.core.disposition import Classification, Disposition, Operation, Position
from poolguard.core.retry import Guard, cannot_connect, error_text
from poolguard.errors import PoolguardError, PoolTimeout, QueryTimeout, TransactionTimeout
from poolguard.integrations.backstop import Ticket, watchdog

__all__ = [
    "ARMED",
    "BACKSTOP_GRACE",
    "CLEANUP",
    "COMMIT_OF_UNIT",
    "LIFETIME_JITTER",
    "NORMAL",
    "UNIT_OF_WORK",
    "VALIDATE_TIMEOUT",
    "Armed",
    "DeadlineSpent",
    "Evicted",
    "Limit",
    "NativeRules",
]

#: Slack added to ``query_timeout`` before the client backstop cuts the socket, so that the
#: server's own statement timeout (which keeps the connection usable) normally fires first.
BACKSTOP_GRACE = 0.5
#: Upper bound of a checkout validation ping (also bounded by the caller's deadline).
VALIDATE_TIMEOUT = 1.0
#: Max-lifetime jitter at checkout: ``max_lifetime * uniform(1 - JITTER, 1)``, the same -5%..0
#: psycopg_pool applies to its own expiry on return (each keeps its own draw).
LIFETIME_JITTER = 0.05

#: A unit of work (``pool.transaction``): statements are never retried alone, the unit is.
UNIT_OF_WORK = Operation(Position.LATER, unit_of_work=True)
COMMIT_OF_UNIT = Operation(Position.COMMIT, unit_of_work=True)
_STATEMENT_OPS = {
    True: Operation(Position.AUTOCOMMIT, idempotent=True),
    False: Operation(Position.AUTOCOMMIT, idempotent=False),
}

# How a connection's waits are bounded (its ``mode`` attribute).
NORMAL = 0  # each wait on the socket arms the backstop (query timeout, deadline, txn timeout)
ARMED = 1  # an outer operation armed one backstop for all its waits (a guarded statement)
CLEANUP = 2  # the pool's own ROLLBACK / ping: bounded even when the caller's deadline is spent

Limit = tuple[float, type[PoolguardError], str]
Armed = tuple[Ticket, Limit]


class Classify(Protocol):
    def __call__(self, exc: BaseException, /) -> Classification: ...


class IsIdempotent(Protocol):
    def __call__(self, sql: str, /) -> bool: ...


class DropIn(Protocol):
    """``base`` that is also the driver's error class its users catch."""

    def __call__(
        self,
        base: type[PoolguardError],
        message: str,
        /,
        *,
        orig: BaseException | None = None,
        hint: str | None = None,
    ) -> PoolguardError: ...


class Evicted(Exception):
    """Raised by the checkout check (lifetime, idle...): the connection is closed already."""


class DeadlineSpent(Exception):
    """The caller's deadline ended before a checkout validation could run."""


@dataclasses.dataclass
class NativeRules:
    """Settings, Guard and pool-wide marks of one native pool, and the decisions on them."""

    settings: Settings
    guard: Guard
    redacted_url: str
    suspect_before: float = 0.0
    """Monotonic time: connections created before it are validated at their next checkout
    (a disconnect was seen: restart, crash, failover, killed backends)."""
    server_version: Any = None
    last_connect_error: BaseException | None = None
    query_limit: Limit | None = None
    cleanup_limit: Limit = (VALIDATE_TIMEOUT + BACKSTOP_GRACE, QueryTimeout, "rollback timeout")
    lent: Callable[[], object] = dataclasses.field(init=False)
    """Count one checkout (a pre-bound C-level counter: no lock on the hot path)."""
    given_back: Callable[[], object] = dataclasses.field(init=False)
    quiet_idle: float = dataclasses.field(init=False)
    """Idle time below which a checkout has nothing to check (neither ``max_idle`` nor
    ``validate_idle`` reached)."""
    _unit_guards: dict[Any, Guard] = dataclasses.field(default_factory=dict)
    recycle_before: float = 0.0
    """Monotonic: connections created before it carry server-side timeouts that were since
    reconfigured; replaced at their next checkout (0 never matches: only PoolRules moves it)."""

    #: Prefix of the per-connection attributes (see the module docstring).
    STATE_PREFIX: ClassVar[str] = "_native_"
    #: The drop-in class of a checkout that ran out of time (also the driver's pool timeout).
    POOL_TIMEOUT: ClassVar[type[PoolguardError]] = PoolTimeout
    #: Do the pool's own backstop cuts spare the older connections the suspect mark? (A cut
    #: says the server is slow or frozen, which a sibling's own query timeout handles.)
    CUT_SPARES_SIBLINGS: ClassVar[bool] = True
    # The driver's functions (plain functions: ``staticmethod(...)`` in each subclass).
    classify: ClassVar[Classify]
    dropin: ClassVar[DropIn]
    is_idempotent: ClassVar[IsIdempotent]
    _RULES: ClassVar[str]
    _MODE: ClassVar[str]
    _CREATED: ClassVar[str]
    _EXPIRES: ClassVar[str]
    _RETURNED: ClassVar[str]
    _TXN_END: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The attribute names, spelled out once per class rather than on each (hot) read.
        p = cls.STATE_PREFIX
        cls._RULES, cls._MODE, cls._TXN_END = p + "rules", p + "mode", p + "txn_end"
        cls._CREATED, cls._EXPIRES, cls._RETURNED = p + "created", p + "expires", p + "returned"

    # -- what only the driver knows (overridden) ------------------------------------------------
    def socket_of(self, conn: Any) -> int | None:
        """The file descriptor the watchdog cuts, None when the connection is closed."""
        raise NotImplementedError

    def discard(self, conn: Any) -> None:
        """Close ``conn`` so that its pool replaces it."""
        raise NotImplementedError

    def cut_socket(self, conn: Any) -> None:
        """Close ``conn`` after the watchdog cut its socket."""
        self.discard(conn)

    def session_ended(self, conn: Any) -> None:
        """``conn`` failed with a disconnect its driver may not have closed it for."""

    def server_version_of(self, conn: Any) -> Any:
        raise NotImplementedError

    def may_rerun(self, exc: BaseException, allowed: frozenset[Any]) -> bool:
        """May a unit that failed with a RETRY_TRANSACTION ``exc`` run again, when the call
        allows re-runs on the error codes ``allowed``?"""
        raise NotImplementedError

    # -- settings -------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.lent = self.guard.stats.counter("checkouts")
        self.given_back = self.guard.stats.counter("checkins")
        self._derive()

    def _derive(self) -> None:
        """The values read per checkout / statement, computed once from ``settings``."""
        s = self.settings
        max_idle = s.max_idle or float("inf")
        self.quiet_idle = min(
            max_idle, float("inf") if s.validate_idle is None else s.validate_idle
        )
        q = s.query_timeout
        self.query_limit = (q + BACKSTOP_GRACE, QueryTimeout, "query timeout") if q else None

    @property
    def name(self) -> str:
        return self.guard.name

    # -- backstop -------------------------------------------------------------------------------
    def limit(self, conn: Any) -> Limit | None:
        """The tightest bound on one wait of ``conn``: query timeout, deadline, txn timeout."""
        if getattr(conn, self._MODE) == CLEANUP:
            return self.cleanup_limit
        best = self.query_limit
        at = _deadline.get()
        end = getattr(conn, self._TXN_END)
        if at is None and end is None:
            return best
        now = time.monotonic()
        if at is not None and (best is None or at - now < best[0]):
            best = (at - now, QueryTimeout, "deadline")
        if end is not None and (best is None or end - now < best[0]):
            best = (end - now, TransactionTimeout, "transaction timeout")
        return best

    def arm(self, conn: Any, limit: Limit | None = None) -> Armed | None:
        """Arm the watchdog on ``conn``'s socket (for ``limit``, else :meth:`limit`); raise at
        once when the bound is spent."""
        if limit is None:
            limit = self.limit(conn)
            if limit is None:
                return None
        if limit[0] <= 0:
            raise self.dropin(
                limit[1],
                f"{self.name}: {limit[2]} exceeded before the statement started",
                hint="raise the poolguard.deadline() budget or make the work shorter",
            )
        fd = self.socket_of(conn)
        if fd is None:
            return None  # closed: the wait fails at once on its own
        return watchdog().arm(fd, limit[0]), limit

    def failed(
        self, conn: Any, armed: Armed | None, exc: Exception, *, observe: bool = True
    ) -> Exception:
        """The error to raise after a wait failed (a cut becomes a timeout).

        ``observe=False`` for an outer operation whose inner waits already counted the error
        (they leave the suspect mark to it: only it knows whether its watchdog cut the socket).
        """
        if armed is not None and not armed[0].cancel():
            return self.cut(conn, armed[1], exc)
        if self.observe(exc, count=observe):
            self.session_ended(conn)
        return exc

    def succeeded(self, conn: Any, armed: Armed | None) -> None:
        if armed is not None and not armed[0].cancel():
            # The reply came in just as the watchdog fired: the socket is cut all the same.
            raise self.cut(conn, armed[1], None)

    def cut(self, conn: Any, limit: Limit, exc: BaseException | None) -> PoolguardError:
        seconds, cls, what = limit
        self.guard.stats.evict("timeout")
        self.cut_socket(conn)  # the pool sees a closed connection and replaces it
        err = self.dropin(
            cls,
            f"{self.name}: no reply within {max(seconds, 0):.2f}s ({what}); the connection was"
            " cut and discarded (the server may be frozen, or the network down)",
            orig=exc,
            hint=f"raise the {what} if the work is legitimately slow",
        )
        err.poolguard_cut = True  # type: ignore[attr-defined]
        return err

    def observe(self, exc: BaseException, *, count: bool = True, mark: bool = True) -> bool:
        """Note a disconnect (``count``; True when ``exc`` is one); any disconnect makes every
        older connection suspect (``mark``), unless the pool's own backstop cut it.

        Not only POOL-scope ones: a crashed or killed server often shows up as the driver's
        bare EOF (CONNECTION scope) rather than a shutdown error, and what killed this
        connection has usually killed its idle siblings. Unmarked, each retry drew the next
        dead idle connection (3 attempts spent on 3 dead connections after a primary crash).
        Suspect means "pinged at the next checkout", not dropped, as the SQLAlchemy
        integration does. A backstop cut (a slow or frozen server) says nothing the sibling's
        own query timeout would not (see ``CUT_SPARES_SIBLINGS``).
        """
        c = self.classify(exc)
        if not c.disconnect:
            return False
        if count:
            self.guard.stats.disconnect(c.reason, exc)
        if mark and not (self.CUT_SPARES_SIBLINGS and getattr(exc, "poolguard_cut", False)):
            self.suspect_before = time.monotonic()
        return True

    # -- checkout -------------------------------------------------------------------------------
    def checkout(self, conn: Any) -> float | None:
        """Seconds the validation ping may take, None when no ping is needed; raises
        :class:`Evicted` (reconfigured, lifetime, idle) or :class:`DeadlineSpent`."""
        now = time.monotonic()
        returned = getattr(conn, self._RETURNED)
        created = getattr(conn, self._CREATED)
        expires = getattr(conn, self._EXPIRES)
        suspect = created < self.suspect_before
        if returned is None and not suspect:
            return None  # fresh: it just proved the server answers
        if not suspect and now - returned < self.quiet_idle and now < expires:
            return None  # the common case, told in one test (the rules below agree)
        age = now - created
        idle = 0.0 if returned is None else now - returned
        if suspect and created < self.recycle_before:
            # Opened with server timeouts poolguard.reconfigure() changed since.
            self.evict(conn, "reconfigured", age, idle)
        if expires <= now:
            self.evict(conn, "lifetime", age, idle)
        s = self.settings
        if s.max_idle and idle >= s.max_idle:
            self.evict(conn, "idle", age, idle)
        if not suspect and (s.validate_idle is None or idle < s.validate_idle):
            return None
        at = _deadline.get()
        if at is None:
            return VALIDATE_TIMEOUT
        if at - now <= 0:
            raise DeadlineSpent()
        return min(VALIDATE_TIMEOUT, at - now)

    def age_idle(self, conn: Any) -> tuple[float, float]:
        """``conn``'s age and idle time now (idle 0 while it was never handed out)."""
        now = time.monotonic()
        returned = getattr(conn, self._RETURNED)
        return now - getattr(conn, self._CREATED), 0.0 if returned is None else now - returned

    def evict(self, conn: Any, reason: str, age: float, idle: float) -> None:
        self.guard.stats.evict(reason, age, idle)
        self.discard(conn)
        raise Evicted(reason)

    def validation_failed(self, conn: Any, exc: BaseException) -> None:
        stats = self.guard.stats
        stats.incr("validation_failures")
        stats.evict("validation", *self.age_idle(conn))
        self.discard(conn)
        self.observe(exc)

    # -- connecting -----------------------------------------------------------------------------
    def connected(self, conn: Any) -> None:
        self.guard.stats.incr("connects")
        self.last_connect_error = None
        self.guard.breaker.record_success()
        self.server_version = self.server_version_of(conn)
        now = time.monotonic()
        for attr, value in (
            (self._CREATED, now),
            (self._EXPIRES, now + self.lifetime()),
            (self._RULES, self),
            (self._MODE, NORMAL),
            (self._RETURNED, None),
            (self._TXN_END, None),
        ):
            setattr(conn, attr, value)

    def lifetime(self) -> float:
        """A jittered max lifetime for one new connection (so they do not expire together)."""
        if not self.settings.max_lifetime:
            return float("inf")
        return self.settings.max_lifetime * random.uniform(1.0 - LIFETIME_JITTER, 1.0)

    def connect_failed(self, exc: BaseException, *, breaker: bool = False) -> None:
        """Count a failed connect; ``breaker`` for a caller outside the retry loop (whose
        loop records it itself)."""
        self.guard.stats.incr("connect_failures")
        self.last_connect_error = exc
        if breaker:
            self.guard.breaker.record_failure()
            self.guard.last_connect_error = error_text(exc)

    # -- acquiring ------------------------------------------------------------------------------
    def deadline_wait(self, timeout: float | None) -> float | None:
        """``min(timeout or acquire_timeout, deadline)`` for a checkout under a deadline."""
        configured = timeout if timeout is not None else self.settings.acquire_timeout
        return effective_timeout(
            configured, what=f"{self.name} connection checkout", error=self.POOL_TIMEOUT
        )

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
                ending=f"circuit breaker open after {breaker.failures} failed connects,"
                f" failing fast; next probe in {breaker.admits_in():.1f}s",
                env_prefix=g.env_prefix,
            )
            raise self.dropin(type(exc), message, hint=hint) from last

    def pool_busy(self, waited: float, sizes: str) -> PoolguardError:
        """The drop-in PoolTimeout of a pool that is merely busy (``sizes``: its measures)."""
        return self.dropin(
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
            idempotent = isinstance(query, str) and self.is_idempotent(query)
        return _STATEMENT_OPS[bool(idempotent)]

    def unit_guard(self, retry_on: Collection[Any], attempts: int | None) -> Guard:
        """The pool's Guard seen through one call's retryable error codes and attempt count
        (same budget, breaker and stats)."""
        key = (frozenset(retry_on), attempts)
        cached = self._unit_guards.get(key)
        if cached is not None:
            return cached
        allowed = frozenset(retry_on)
        classify, may_rerun = self.classify, self.may_rerun

        def unit_classify(exc: BaseException) -> Classification:
            c = classify(exc)
            if c.disposition is Disposition.RETRY_TRANSACTION and not may_rerun(exc, allowed):
                return Classification(Disposition.FAIL, c.reason)
            return c

        guard = self.guard.derive(unit_classify, attempts=attempts)
        self._unit_guards[key] = guard
        return guard

    def begin_unit(self, conn: Any) -> None:
        t = self.settings.transaction_timeout
        setattr(conn, self._TXN_END, None if not t else time.monotonic() + t)

    @property
    def checked_out(self) -> int:
        stats = self.guard.stats
        return stats.count("checkouts") - stats.count("checkins")
