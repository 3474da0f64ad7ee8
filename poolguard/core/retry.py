"""The one retry loop: attempt → classify → decide → breaker → budget → backoff within deadline.

All decisions live in :class:`Attempts` (one per operation) and are shared by the sync front end
:meth:`Guard.run_with` and the async one :meth:`Guard.arun_with`; the two front ends differ only
in how they call and how they sleep. A :class:`Guard` is the per-pool bundle of policy and shared
state (budget, breaker, stats) that every integration builds once from :class:`Settings`.

What an error means comes from ``disposition.py`` (fed by the integration's classifier, i.e. the
tables of ``poolguard/backends/``); the loop's parts are ``backoff.py``, ``breaker.py``,
``budget.py``, ``deadline.py`` and ``stats.py``. Also here: :class:`RetryPolicy`, :class:`GiveUp`
(why the loop stopped, for the integration's error factory) and :func:`set_testing` (no backoff in
users' test suites).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from poolguard.core.backoff import Backoff, Uniform, default_rng
from poolguard.core.breaker import CLOSED, BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.deadline import Clock, _deadline, remaining
from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    decide,
)
from poolguard.core.stats import Hooks, PoolStats
from poolguard.errors import (
    AmbiguousResultError,
    AttemptRecord,
    CircuitOpenError,
    ConnectTimeout,
    PoolguardError,
    QueryTimeout,
)

if TYPE_CHECKING:
    from poolguard.config.settings import Settings

T = TypeVar("T")

Classifier = Callable[[BaseException], Classification]

#: The context of a plain autocommit operation that is not known to be idempotent.
AUTOCOMMIT = Operation()

_testing = False


def set_testing(enabled: bool = True) -> None:
    """Turn backoff sleeps off (delays become 0) for fast test suites, like stamina's."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    return _testing


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts, how to back off, and how long one operation may spend retrying."""

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry attempts must be >= 1 (1 = no retries)")


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Why the loop stopped; handed to the integration's error factory."""

    action: Action
    error: BaseException
    classification: Classification
    attempts: int
    history: tuple[AttemptRecord, ...]
    why: str
    hint: str | None
    pool: str
    elapsed: float = 0.0
    """Seconds since the operation's first attempt."""
    target: str | None = None
    """What the pool connects to (redacted ``host:port``), see :attr:`Guard.target`."""
    env_prefix: str = "POOLGUARD_"

    def cannot_connect(self, last_error: str) -> tuple[str, str]:
        """(message, hint) of a give-up while connecting; ``last_error``: the driver's words."""
        return cannot_connect(
            self.pool,
            self.target,
            last_error,
            attempts=self.attempts,
            elapsed=self.elapsed,
            ending=self.why,
            env_prefix=self.env_prefix,
        )


#: Longest driver error text quoted in a headline (the whole error stays chained).
ERROR_TEXT_LIMIT = 300


def error_text(exc: BaseException) -> str:
    """The driver's own words for ``exc`` on one line: under SQLAlchemy-style wrappers
    (``.orig``), whitespace collapsed, bounded."""
    for _ in range(3):
        inner = getattr(exc, "orig", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = exc.message if isinstance(exc, PoolguardError) else str(exc)
    text = " ".join(f"{text} {_os_reason(exc, text)}".split()) or type(exc).__name__
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."


def _os_reason(exc: BaseException, text: str) -> str:
    """The system's reason when the driver kept it only in the chain: aiomysql's "Can't
    connect to MySQL server on '127.0.0.1'" and asyncio's "Connect call failed" come from a
    ConnectionRefusedError whose words ("Connection refused") are nowhere in the text."""
    reason = exc.__cause__ if exc.__cause__ is not exc else None  # ``raise e from e``
    reason = reason or exc.__context__
    if not isinstance(reason, OSError):
        return ""
    words = os.strerror(reason.errno) if reason.errno else type(reason).__name__
    said = text.lower()
    timed_out = "timed out" in said or "timeout" in said
    if words.lower() in said or (isinstance(reason, TimeoutError) and timed_out):
        return ""
    return f"({words})"


def cannot_connect(
    pool: str,
    target: str | None,
    last_error: str | None,
    *,
    attempts: int,
    elapsed: float,
    ending: str,
    env_prefix: str = "POOLGUARD_",
    tried: str | None = None,
) -> tuple[str, str]:
    """(message, hint) for a call that could not connect: what is unreachable, the last driver
    error, attempts and time spent first; the circuit breaker (a consequence) only after.

    ``target`` is the integration's redacted ``host:port``: the core never parses URLs.
    """
    where = target or "the server"
    last = f": {last_error}" if last_error else ""
    if tried is None:
        tried = f"{attempts} attempt{'' if attempts == 1 else 's'} in {elapsed:.1f}s"
        if attempts == 0:
            tried = "not tried"
    message = f"{pool}: cannot connect to {where}{last} ({tried}; {ending})"
    p = env_prefix
    hint = (
        f"check that the server is up and reachable from here; {p}CONNECT_TIMEOUT bounds each"
        f" attempt, {p}RETRY_TIMEOUT (or poolguard.deadline()) how long a call keeps"
        f" reconnecting, {p}BREAKER_FAILURES / {p}BREAKER_RESET when callers stop trying"
    )
    return message, hint


ErrorFactory = Callable[[GiveUp], BaseException]


def _own_error(exc: BaseException, clock: Clock) -> Classification | None:
    if not isinstance(exc, PoolguardError):
        return None
    if isinstance(exc, ConnectTimeout):
        left = remaining(clock)
        if left is None or left > 0:
            # A connect that timed out never sent a request (retry-safety rule 1), and it is
            # evidence of a dead or unreachable server, so it counts towards the breaker.
            # One cut short by the caller's deadline is neither: it falls through to FAIL.
            return _CONNECT_TIMEOUT
    # Other own errors (query/pool timeouts, an open breaker, ambiguity) are final by
    # construction: a timeout already spent its budget, an ambiguous result must never be
    # replayed. Dropin variants are named ``QueryTimeout_OperationalError``: label the base.
    name = type(exc).__name__.split("_")[0]
    return Classification(Disposition.FAIL, _snake(name))


_CONNECT_TIMEOUT = Classification(
    Disposition.RETRY, "connect_timeout", disconnect=True, connect_phase=True
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def default_error(g: GiveUp) -> BaseException:
    """Ambiguity becomes AmbiguousResultError; anything else is the original error, annotated.

    Integrations replace this (``make_error``) to raise their drop-in classes; each turns a
    failure to connect into a headline built by :meth:`GiveUp.cannot_connect`."""
    if g.action is Action.AMBIGUOUS:
        return AmbiguousResultError(
            f"{g.pool}: the outcome is unknown ({g.classification.reason}): the request may have"
            f" been applied, so it was not retried",
            attempts=g.attempts,
            history=g.history,
            hint=g.hint,
        )
    if g.attempts > 1 and hasattr(g.error, "add_note"):
        g.error.add_note(f"poolguard: gave up after {g.attempts} attempts: {g.why}")
    return g.error


def policy_from_settings(settings: Settings) -> RetryPolicy:
    """The :class:`RetryPolicy` the ``retry_*`` settings describe."""
    return RetryPolicy(
        attempts=settings.retry_attempts,
        backoff=Backoff(
            initial=settings.retry_backoff_initial,
            max=settings.retry_backoff_max,
            multiplier=settings.retry_backoff_multiplier,
            jitter=settings.retry_jitter,
        ),
        timeout=settings.retry_timeout,
    )


def _with_attempts(policy: RetryPolicy, attempts: int) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=policy.backoff, timeout=policy.timeout)


class Guard:
    """Policy plus shared state (budget, breaker, stats) of one pool."""

    def __init__(
        self,
        name: str,
        backend: str,
        classify: Classifier,
        *,
        policy: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        breaker: CircuitBreaker | None = None,
        stats: PoolStats | None = None,
        make_error: ErrorFactory = default_error,
        clock: Clock = time.monotonic,
        rng: Uniform = default_rng,
        target: str | None = None,
        env_prefix: str = "POOLGUARD_",
        counts_connect_failures: bool = True,
    ) -> None:
        self.name = name
        self.backend = backend
        self.target = target
        """What the pool connects to, for messages: a redacted ``host:port`` set by the
        integration (never a password; the core does not parse URLs)."""
        self.env_prefix = env_prefix
        """Prefix of the variables that configure this pool (``POOLGUARD_REDIS_``...), for hints."""
        self.last_connect_error: str | None = None
        """The driver's words for the latest failed connect, for callers the breaker rejects
        before they tried themselves."""
        self.counts_connect_failures = counts_connect_failures
        """Count ``connect_failures`` when a connect-phase failure reaches the loop (SQL
        engines connect inside it); False where the integration counts them where it
        connects (Redis connections, psycopg_pool's background connects)."""
        self._classify = classify
        self.policy = policy or RetryPolicy()
        self.budget = budget or RetryBudget(0.2)
        self.stats = stats or PoolStats(name, backend)
        if self.stats.target is None:
            self.stats.target = target  # event records name the server (redacted), like errors
        self._count_request = self.stats.counter("requests")
        self.breaker = breaker or CircuitBreaker(5, 10.0, clock=clock, name=name)
        if self.breaker._on_change is None:
            self.breaker._on_change = self._breaker_changed
        self.make_error = make_error
        self.clock = clock
        self.rng = rng
        # Guards made by derive(), with their attempt override: reconfigure() updates them too.
        self._derived: weakref.WeakKeyDictionary[Guard, int | None] = weakref.WeakKeyDictionary()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str,
        backend: str,
        classify: Classifier,
        make_error: ErrorFactory = default_error,
        hooks: Hooks | None = None,
        gauges: Callable[[], dict[str, Any]] | None = None,
        clock: Clock = time.monotonic,
        target: str | None = None,
        counts_connect_failures: bool = True,
    ) -> Guard:
        from poolguard.config.env import lookup_order

        return cls(
            name,
            backend,
            classify,
            policy=policy_from_settings(settings),
            budget=RetryBudget(settings.retry_budget),
            breaker=CircuitBreaker(
                settings.breaker_failures, settings.breaker_reset, clock=clock, name=name
            ),
            stats=PoolStats(name, backend, hooks=hooks, gauges=gauges),
            make_error=make_error,
            clock=clock,
            target=target,
            env_prefix=lookup_order("", settings.backend, settings.name)[0],
            counts_connect_failures=counts_connect_failures,
        )

    def derive(self, classify: Classifier, *, attempts: int | None = None) -> Guard:
        """A Guard for another kind of operation on the same pool (e.g. whole units of work):
        its own classifier (and attempt count), the same budget, breaker, stats and errors."""
        policy = self.policy
        if attempts is not None:
            policy = _with_attempts(policy, attempts)
        derived = Guard(
            self.name,
            self.backend,
            classify,
            policy=policy,
            budget=self.budget,
            breaker=self.breaker,
            stats=self.stats,
            make_error=self.make_error,
            clock=self.clock,
            rng=self.rng,
            target=self.target,
            env_prefix=self.env_prefix,
            counts_connect_failures=self.counts_connect_failures,
        )
        self._derived[derived] = attempts
        return derived

    def reconfigure(self, settings: Settings) -> None:
        """Adopt the retry policy, budget ratio and breaker thresholds of ``settings``.

        The policy is swapped whole (a new frozen :class:`RetryPolicy`), here and in every Guard
        :meth:`derive` made from this one (each keeping its own attempt count): an operation
        keeps the policy its :class:`Attempts` captured. Budget tokens and breaker state carry
        over (:meth:`RetryBudget.reconfigure`, :meth:`CircuitBreaker.reconfigure`).
        """
        policy = policy_from_settings(settings)
        self.policy = policy
        for derived, attempts in list(self._derived.items()):
            derived.policy = policy if attempts is None else _with_attempts(policy, attempts)
        self.budget.reconfigure(settings.retry_budget)
        self.breaker.reconfigure(settings.breaker_failures, settings.breaker_reset)

    def _breaker_changed(self, old: BreakerState, new: BreakerState) -> None:
        self.stats.breaker_changed(old.value, new.value)

    def classify(self, exc: BaseException) -> Classification:
        return _own_error(exc, self.clock) or self._classify(exc)

    def attempts(
        self, op: Operation = AUTOCOMMIT, *, timeout_error: type[PoolguardError] = QueryTimeout
    ) -> Attempts:
        return Attempts(self, op, timeout_error)

    # -- the loop, sync and async: the only two copies, each a handful of lines ---------------
    def run_with(
        self,
        fn: Callable[[Attempts], T],
        op: Operation = AUTOCOMMIT,
        *,
        timeout_error: type[PoolguardError] = QueryTimeout,
        sleep: Callable[[float], object] = time.sleep,
    ) -> T:
        """Call ``fn(attempts)`` until it succeeds or the rule says stop (then raise).

        ``sleep`` is replaceable because SQLAlchemy's asyncio layer runs sync code inside a
        greenlet, where the backoff must be ``await_only(asyncio.sleep(d))``, not ``time.sleep``.
        """
        return self._loop(fn, Attempts(self, op, timeout_error), sleep)

    def _loop(
        self, fn: Callable[[Attempts], T], attempts: Attempts, sleep: Callable[[float], object]
    ) -> T:
        while True:
            wait = attempts.begin()
            if wait:
                sleep(wait)  # the breaker is open: wait for its next probe, off the network
                continue
            try:
                result = fn(attempts)
            except Exception as exc:
                delay = attempts.failed(exc)
                if delay > 0:
                    sleep(delay)
            else:
                attempts.succeeded()
                return result

    async def arun_with(
        self,
        fn: Callable[[Attempts], Awaitable[T]],
        op: Operation = AUTOCOMMIT,
        *,
        timeout_error: type[PoolguardError] = QueryTimeout,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> T:
        """Async twin of :meth:`run_with`; the decisions are the same object's.

        ``sleep`` is replaceable for the same reasons as in :meth:`run_with` (other event
        loops, a fake clock in tests).
        """
        return await self._aloop(fn, Attempts(self, op, timeout_error), sleep)

    async def _aloop(
        self,
        fn: Callable[[Attempts], Awaitable[T]],
        attempts: Attempts,
        sleep: Callable[[float], Awaitable[object]],
    ) -> T:
        while True:
            wait = attempts.begin()
            if wait:
                await sleep(wait)
                continue
            try:
                result = await fn(attempts)
            except Exception as exc:
                delay = attempts.failed(exc)
                if delay > 0:
                    await sleep(delay)
            else:
                attempts.succeeded()
                return result

    # -- the first pass without the loop, for per-statement hot paths -------------------------
    def first_attempt(self) -> float | None:
        """Admit a first attempt without building the loop; None: use :meth:`run_with`.

        The same checks and bookkeeping as the first ``Attempts.begin()`` (budget credit,
        request count, deadline, breaker) when they all pass, which is the common case; the
        loop is only needed once something failed. Returns the start of the operation (its
        retry window) or None when the deadline is spent or the breaker is not closed: then
        :meth:`run_with` raises or waits exactly as it always does. After the attempt, call
        ``guard.breaker.record_success()`` on success, or :meth:`resume_with` on an
        ``Exception`` (outside the ``except`` block, so later errors do not chain to it).
        """
        # Runs for every checkout and statement: the checks of RetryBudget.on_request and
        # CircuitBreaker.admission's lock-free fast paths are inlined (measured with
        # record_success: 77 -> 62 bytecodes, 0.61 -> 0.35 us per pair).
        clock = self.clock
        at = _deadline.get()
        if at is not None and at - clock() <= 0:
            return None
        breaker = self.breaker
        if breaker._state is not CLOSED and breaker.failures is not None:
            return None
        budget = self.budget
        if budget._tokens < budget.capacity:  # a full bucket stays full
            budget.on_request()
        self._count_request()
        return clock()

    def resume_with(
        self,
        fn: Callable[[Attempts], T],
        failure: Exception,
        started: float,
        op: Operation = AUTOCOMMIT,
        *,
        timeout_error: type[PoolguardError] = QueryTimeout,
        sleep: Callable[[float], object] = time.sleep,
    ) -> T:
        """Continue :meth:`run_with` after a first attempt admitted by :meth:`first_attempt`
        failed with ``failure``: the same decision, backoff and further attempts (``fn`` sees
        ``attempts.number`` 2, 3, ...), the request counted once."""
        attempts = self._resumed(op, timeout_error, started)
        delay = attempts.failed(failure)
        if delay > 0:
            sleep(delay)
        return self._loop(fn, attempts, sleep)

    async def aresume_with(
        self,
        fn: Callable[[Attempts], Awaitable[T]],
        failure: Exception,
        started: float,
        op: Operation = AUTOCOMMIT,
        *,
        timeout_error: type[PoolguardError] = QueryTimeout,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> T:
        """Async twin of :meth:`resume_with`."""
        attempts = self._resumed(op, timeout_error, started)
        delay = attempts.failed(failure)
        if delay > 0:
            await sleep(delay)
        return await self._aloop(fn, attempts, sleep)

    def _resumed(
        self, op: Operation, timeout_error: type[PoolguardError], started: float
    ) -> Attempts:
        attempts = Attempts(self, op, timeout_error)
        attempts.number = 1
        attempts._started = started
        return attempts

    def run(self, fn: Callable[[], T], op: Operation = AUTOCOMMIT) -> T:
        return self.run_with(lambda _attempts: fn(), op)

    def arun(
        self, fn: Callable[[], Awaitable[T]], op: Operation = AUTOCOMMIT
    ) -> Coroutine[Any, Any, T]:
        """``await guard.arun(afn)``: a plain def handing back arun_with's coroutine, which
        saves one coroutine layer (~0.2 us) per call."""
        return self.arun_with(lambda _attempts: fn(), op)


class FirstAttempt:
    """What an attempt function gets instead of :class:`Attempts` on the fast path
    (:meth:`Guard.first_attempt`): attempt number 1, and ``op`` for the adapter to set once a
    failure tells it what the attempt may have done (then passed on to :meth:`Guard.resume_with`).
    Building the whole loop state per call cost ~1 us of a Redis GET's ~40 (cProfile)."""

    __slots__ = ("op",)

    number = 1

    def __init__(self, op: Operation) -> None:
        self.op = op


class Attempts:
    """The decision state of one operation across its attempts (no I/O, no sleeping)."""

    __slots__ = (
        "_last_class",
        "_last_error",
        "_started",
        "_timeout_error",
        "guard",
        "history",
        "number",
        "op",
        "policy",
        "previous",
    )

    def __init__(
        self, guard: Guard, op: Operation, timeout_error: type[PoolguardError] = QueryTimeout
    ) -> None:
        self.guard = guard
        self.policy = guard.policy
        """Captured once: a live reconfiguration (``Guard.reconfigure``) swaps ``guard.policy``
        for operations that start later, never for this one."""
        self.op = op
        """Adapters may replace this per attempt (e.g. once they know the statement's position)."""
        self.number = 0
        self.history: list[AttemptRecord] = []
        self.previous: float | None = None
        self._started = 0.0
        self._timeout_error = timeout_error
        self._last_error: BaseException | None = None
        self._last_class: Classification | None = None

    def begin(self) -> float:
        """Before each attempt: deadline, breaker and budget checks.

        Returns 0.0 when the attempt may run now, or seconds to wait (off the network) for the
        circuit breaker's next probe before calling ``begin()`` again; raises when the call must
        not run at all (deadline spent, breaker open beyond the caller's window, no budget).
        """
        g = self.guard
        if self.number == 0:
            self._started = g.clock()
            g.budget.on_request()
            g._count_request()
        at = _deadline.get()  # current_deadline(), minus a call: this is the hot path
        if at is not None and at - g.clock() <= 0:
            self._deadline_exceeded()
        wait = g.breaker.admission()
        if wait is not None:
            return self._wait_for_breaker(wait)
        self.number += 1
        return 0.0

    def _limit(self) -> float | None:
        """When this operation must be over: the deadline or the end of its retry window."""
        limit = _deadline.get()
        timeout = self.policy.timeout
        if timeout is not None:
            cap = self._started + timeout
            limit = cap if limit is None else min(limit, cap)
        return limit

    def _wait_for_breaker(self, wait: float) -> float:
        g = self.guard
        limit = self._limit()
        if limit is not None and g.clock() + wait < limit:
            g.stats.incr("breaker_waits")
            return max(wait, 1e-3)
        self._breaker_rejects(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _breaker_rejects(self, wait: float) -> None:
        g = self.guard
        g.stats.incr("circuit_open_rejections")
        # The breaker opens on failed connects only, so the headline is what cannot be reached
        # and why (the driver's last error), then the breaker's verdict.
        state = g.breaker.state.value.replace("_", "-")
        ending = f"circuit breaker {state}, failing fast; next probe in {wait:.1f}s"
        last = g.last_connect_error
        if self._last_error is not None:
            last = error_text(self._last_error)
        elif self.number == 0:
            ending = f"circuit breaker {state} after {g.breaker.failures} failed connects, " + (
                f"failing fast; next probe in {wait:.1f}s"
            )
        message, hint = cannot_connect(
            g.name,
            g.target,
            last,
            attempts=self.number,
            elapsed=g.clock() - self._started,
            ending=ending,
            env_prefix=g.env_prefix,
        )
        err = CircuitOpenError(message, hint=hint)
        if self._last_error is None:
            raise err
        # The breaker opened between our attempts: keep what led here in the error.
        err.attempts = self.number
        err.history = tuple(self.history)
        if self._last_class is not None and len(err.history) < self.number:
            last_record = AttemptRecord(
                self.number, self._last_class.reason, type(self._last_error).__name__, 0.0
            )
            err.history = (*err.history, last_record)
        raise err from self._last_error

    def _deadline_exceeded(self) -> None:
        g = self.guard
        message = f"{g.name}: deadline exceeded after {self.number} attempt(s)"
        hint = "raise the poolguard.deadline() budget"
        last = self._last_error
        if last is not None and self._last_class is not None and self._last_class.connect_phase:
            message, hint = cannot_connect(
                g.name,
                g.target,
                error_text(last),
                attempts=self.number,
                elapsed=g.clock() - self._started,
                ending="the caller's poolguard.deadline() ran out",
                env_prefix=g.env_prefix,
            )
        timeout = self._timeout_error(
            message, attempts=self.number, history=self.history, hint=hint
        )
        if self._last_error is None:
            raise timeout
        raise timeout from self._last_error

    def succeeded(self) -> None:
        # Drop the last failure: its traceback holds the loop's frame, which holds us (a cycle
        # that would otherwise keep both alive until the garbage collector runs).
        self._last_error = None
        self.guard.breaker.record_success()

    def failed(self, exc: BaseException, op: Operation | None = None) -> float:
        """Decide after a failure: return the delay before the next attempt, or raise."""
        g = self.guard
        op = op or self.op
        self._last_error = exc
        c = self._last_class = g.classify(exc)
        if c.connect_phase:
            if c.breaker:
                g.breaker.record_failure()
            g.last_connect_error = error_text(exc)
            # A driver's connect failure, not poolguard's own verdict on one (a give-up of a
            # nested loop, an open breaker, a deadline spent before connecting).
            if g.counts_connect_failures and not isinstance(exc, PoolguardError):
                g.stats.incr("connect_failures")
        elif c.disposition is not Disposition.FAIL or not isinstance(exc, PoolguardError):
            g.breaker.record_success()  # the server answered: it is up
        action = decide(c, op)
        if action is Action.RETRY or action is Action.RETRY_TRANSACTION:
            why, hint = self._why_not_retry(c)
            if why is None:
                return self._schedule(c, exc, rerun=op.unit_of_work)
            g.stats.give_up(self.number, c.reason, why, exc, disposition=c.disposition.value)
            self._give_up(action, c, exc, why, hint)
        if action is Action.AMBIGUOUS:
            g.stats.ambiguous(self.number, c.reason, exc, disposition=c.disposition.value)
            self._give_up(action, c, exc, "the request may have been applied", None)
        self._give_up(action, c, exc, "not safe to retry", None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _why_not_retry(self, c: Classification) -> tuple[str | None, str | None]:
        policy = self.policy
        if c.connect_phase and policy.attempts > 1 and self._limit() is not None:
            # Nothing was sent: like HikariCP's connectionTimeout, connecting is retried until
            # the deadline / retry window ends (spaced by backoff and the breaker), so a server
            # restart shorter than the window surfaces no error. ``attempts=1`` still means
            # "no retries at all".
            return None, None
        if self.number >= policy.attempts:
            return (
                f"all {policy.attempts} attempts failed" if policy.attempts > 1 else "not retried",
                "raise POOLGUARD_RETRY_ATTEMPTS if the outage is short",
            )
        return None, None

    def _schedule(self, c: Classification, exc: BaseException, *, rerun: bool = False) -> float:
        g = self.guard
        delay = 0.0 if _testing else self.policy.backoff.delay(self.number, g.rng, self.previous)
        limit = self._limit()
        now = g.clock()
        wait = g.breaker.admits_in()
        if wait > delay:
            # The breaker is open (maybe by this very failure): the next attempt must wait for
            # its probe. Wait only when that fits in a bounded window; otherwise fail fast now
            # rather than after sleeping the backoff.
            if limit is None or now + wait >= limit:
                self._breaker_rejects(wait)
            delay = wait
        if limit is not None and now + delay >= limit:
            why = "the next attempt would not fit in the deadline / retry timeout"
            g.stats.give_up(self.number, c.reason, why, exc, disposition=c.disposition.value)
            self._give_up(Action.FAIL, c, exc, why, "raise the deadline or POOLGUARD_RETRY_TIMEOUT")
        # The budget guards a struggling server against re-executed work. Reconnecting to a
        # server that is down is the breaker's job (it spaces the probes and parks callers off
        # the network), so connect-phase retries are not charged: a restart with many callers
        # in flight would otherwise drain the bucket and surface errors the breaker avoids.
        # Nor are refusals by a server in the wrong role (read-only after a switchover): nothing
        # was executed, and a switchover's write window drained the bucket in 0.3 s (measured).
        if not (c.connect_phase or c.refused) and not g.budget.try_spend():
            why = "the pool's retry budget is exhausted (too many recent retries)"
            g.stats.give_up(
                self.number, c.reason, why, exc, disposition=c.disposition.value, budget=True
            )
            self._give_up(
                Action.FAIL, c, exc, why, "raise POOLGUARD_RETRY_BUDGET, or fix the failing server"
            )
        self.history.append(AttemptRecord(self.number, c.reason, type(exc).__name__, delay))
        self.previous = delay
        g.stats.retry(
            self.number,
            c.reason,
            delay,
            exc,
            disposition=c.disposition.value,
            rerun=rerun,  # under run_transaction every retry re-runs the whole unit
        )
        return delay

    def _give_up(
        self,
        action: Action,
        c: Classification,
        exc: BaseException,
        why: str,
        hint: str | None,
    ) -> None:
        record = AttemptRecord(self.number, c.reason, type(exc).__name__, 0.0)
        history = (*self.history, record)
        g = self.guard
        elapsed = g.clock() - self._started
        give_up = GiveUp(
            action, exc, c, self.number, history, why, hint, g.name,
            elapsed=elapsed, target=g.target, env_prefix=g.env_prefix,
        )  # fmt: skip
        err = g.make_error(give_up)
        if err is exc:
            raise exc
        raise err from exc
