"""The retry loop, through both front ends (Guard.run_with and Guard.arun_with).

Every test body is async and parametrized over ``front``: the sync front end is called
inline, the async one awaited, both with the fake clock's sleep, so the two must behave the
same in every scenario. Failures are produced by fake errors whose classification the test
chooses; decide() itself is covered by test_disposition.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sys
from collections.abc import Callable
from typing import Any

import pytest
from core_fakes import FakeClock

from poolguard.core.backoff import Backoff
from poolguard.core.breaker import BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.deadline import deadline
from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    Position,
    Scope,
    decide,
)
from poolguard.core.retry import AUTOCOMMIT, Attempts, GiveUp, Guard, RetryPolicy
from poolguard.core.stats import Hooks, RetryEvent
from poolguard.errors import (
    AmbiguousResultError,
    AttemptRecord,
    CircuitOpenError,
    ConnectTimeout,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin,
)


class FakeDBError(Exception):
    """A driver error carrying the classification the test wants the backend to give it."""

    def __init__(self, c: Classification) -> None:
        super().__init__(f"fake {c.reason}")
        self.c = c


def classify(exc: BaseException) -> Classification:
    if isinstance(exc, FakeDBError):
        return exc.c
    return Classification(Disposition.FAIL, "unknown")


CONNECT = Classification(
    Disposition.RETRY, "connect_refused", disconnect=True, scope=Scope.POOL, connect_phase=True
)
LOST = Classification(Disposition.RETRY_IF_IDEMPOTENT, "connection_lost", disconnect=True)
LOADING = Classification(Disposition.RETRY, "loading")
SERIALIZATION = Classification(Disposition.RETRY_TRANSACTION, "serialization_failure")
SYNTAX = Classification(Disposition.FAIL, "syntax_error")
IDEMPOTENT = Operation(idempotent=True)


def failing(*outcomes: Classification | object) -> tuple[Callable[[Attempts], Any], list[int]]:
    """fn that raises FakeDBError for each Classification in turn, then returns the next value.

    Once the outcomes run out it repeats the last one. Returns (fn, calls) where calls records
    the attempt number each call saw.
    """
    calls: list[int] = []

    def fn(attempts: Attempts) -> Any:
        calls.append(attempts.number)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, Classification):
            raise FakeDBError(outcome)
        return outcome

    return fn, calls


def assert_note(err: BaseException, text: str) -> None:
    """The give-up note (PEP 678 notes exist from Python 3.11; 3.10 gets none)."""
    if sys.version_info < (3, 11):
        return
    notes: list[str] = getattr(err, "__notes__", [])
    assert len(notes) == 1
    assert text in notes[0]


class Front:
    """One of the two front ends, with the fake clock's sleep injected."""

    def __init__(self, kind: str, clock: FakeClock) -> None:
        self.kind = kind
        self.clock = clock

    async def _asleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        await asyncio.sleep(0)

    async def call(
        self, guard: Guard, fn: Callable[[Attempts], Any], op: Operation = AUTOCOMMIT, **kw: Any
    ) -> Any:
        if self.kind == "sync":
            return guard.run_with(fn, op, sleep=self.clock.sleep, **kw)

        async def afn(attempts: Attempts) -> Any:
            await asyncio.sleep(0)  # a real suspension point, like a driver call
            return fn(attempts)

        return await guard.arun_with(afn, op, sleep=self._asleep, **kw)


@pytest.fixture(params=["sync", "async"])
def front(request: pytest.FixtureRequest, clock: FakeClock) -> Front:
    return Front(request.param, clock)


def make_guard(
    clock: FakeClock,
    *,
    attempts: int = 3,
    backoff: Backoff | None = None,
    timeout: float | None = None,
    budget: RetryBudget | None = None,
    breaker: CircuitBreaker | None = None,
    hooks: Hooks | None = None,
    **kw: Any,
) -> Guard:
    from poolguard.core.stats import PoolStats

    return Guard(
        "db1",
        "sql",
        classify,
        policy=RetryPolicy(
            attempts=attempts,
            backoff=backoff or Backoff(initial=0.1, max=1.0, multiplier=2.0, jitter="none"),
            timeout=timeout,
        ),
        budget=budget or RetryBudget(None),
        breaker=breaker or CircuitBreaker(None, 1.0, clock=clock),
        stats=PoolStats("db1", "sql", hooks=hooks),
        clock=clock,
        rng=random.Random(0),
        **kw,
    )


# -- basics -----------------------------------------------------------------------------------
async def test_success_first_time(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    fn, calls = failing("ok")
    assert await front.call(guard, fn) == "ok"
    assert calls == [1]
    assert clock.sleeps == []
    snap = guard.stats.snapshot()
    assert (snap["requests"], snap["retries"], snap["give_ups"]) == (1, 0, 0)


async def test_retries_then_succeeds(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=5)
    fn, calls = failing(CONNECT, LOADING, "ok")
    assert await front.call(guard, fn) == "ok"
    assert calls == [1, 2, 3]
    assert clock.sleeps == [0.1, 0.2]  # jitter "none": the exponential ceiling
    snap = guard.stats.snapshot()
    assert snap["retries"] == 2
    assert snap["retries_by_reason"] == {"connect_refused": 1, "loading": 1}
    assert snap["give_ups"] == 0


async def test_retries_exactly_what_decide_allows(front: Front, clock: FakeClock) -> None:
    """Every Disposition x Operation: calls and the error raised follow decide()."""
    for disposition, position, sent, idempotent, unit in itertools.product(
        Disposition, Position, (True, False), (False, True), (False, True)
    ):
        guard = make_guard(clock, attempts=3)
        c = Classification(disposition, "r")
        op = Operation(position, idempotent, sent, unit)
        fn, calls = failing(c)
        with pytest.raises(Exception) as info:
            await front.call(guard, fn, op)
        action = decide(c, op)
        retried = action in (Action.RETRY, Action.RETRY_TRANSACTION)
        assert len(calls) == (3 if retried else 1), (c, op)
        err = info.value
        if action is Action.AMBIGUOUS:
            assert isinstance(err, AmbiguousResultError)
            assert isinstance(err.__cause__, FakeDBError)
        else:
            assert isinstance(err, FakeDBError)
        assert guard.stats.count("ambiguous") == (action is Action.AMBIGUOUS)


async def test_gives_up_after_attempts_with_a_note(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=3)
    fn, calls = failing(CONNECT)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2, 3]
    assert clock.sleeps == [0.1, 0.2]
    assert_note(info.value, "poolguard: gave up after 3 attempts: all 3 attempts failed")
    snap = guard.stats.snapshot()
    assert (snap["retries"], snap["give_ups"]) == (2, 1)


async def test_single_attempt_policy_never_retries(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=1)
    fn, calls = failing(CONNECT)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert calls == [1]
    assert not getattr(info.value, "__notes__", [])  # nothing to say after one attempt


async def test_permanent_error_is_raised_untouched(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    fn, calls = failing(SYNTAX)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert calls == [1]
    assert info.value.__cause__ is None
    assert guard.stats.snapshot()["give_ups"] == 0


async def test_transaction_rollback_reruns_the_unit(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    fn, calls = failing(SERIALIZATION, SERIALIZATION, "committed")
    unit = Operation(Position.FIRST, unit_of_work=True)
    assert await front.call(guard, fn, unit) == "committed"
    assert calls == [1, 2, 3]


async def test_adapter_may_refine_the_operation_inside_fn(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    calls: list[int] = []

    def fn(attempts: Attempts) -> str:
        calls.append(attempts.number)
        attempts.op = IDEMPOTENT  # the adapter learned the statement is a plain SELECT
        if len(calls) < 2:
            raise FakeDBError(LOST)
        return "rows"

    assert await front.call(guard, fn) == "rows"  # AUTOCOMMIT alone would be ambiguous
    assert calls == [1, 2]


async def test_ambiguous_error_chained_with_history(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    fn, calls = failing(CONNECT, LOST)  # reconnect worked, then the write's reply was lost
    with pytest.raises(AmbiguousResultError) as info:
        await front.call(guard, fn)
    err = info.value
    assert calls == [1, 2]
    assert isinstance(err.__cause__, FakeDBError)
    assert err.__cause__.c is LOST
    assert err.attempts == 2
    assert err.history == (
        AttemptRecord(1, "connect_refused", "FakeDBError", 0.1),
        AttemptRecord(2, "connection_lost", "FakeDBError", 0.0),
    )
    assert "db1" in str(err)
    assert "connection_lost" in str(err)
    assert "may have been applied" in str(err)
    snap = guard.stats.snapshot()
    assert (snap["ambiguous"], snap["retries"]) == (1, 1)


async def test_own_errors_are_final(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock)
    for own in (
        QueryTimeout("q"),
        PoolTimeout("p"),
        TransactionTimeout("t"),
        CircuitOpenError("c"),
        AmbiguousResultError("a"),
    ):
        calls: list[int] = []

        def fn(attempts: Attempts, own: Exception = own, calls: list[int] = calls) -> None:
            calls.append(1)
            raise own

        with pytest.raises(type(own)) as info:
            await front.call(guard, fn, IDEMPOTENT)
        assert info.value is own
        assert calls == [1]
    assert guard.classify(QueryTimeout("x")).reason == "query_timeout"
    assert guard.classify(dropin(PoolTimeout, KeyError, "x")).reason == "pool_timeout"


async def test_connect_timeout_is_retried_and_counts_for_the_breaker(
    front: Front, clock: FakeClock
) -> None:
    """DESIGN rule 1: a connect timeout never sent the request; it is a connect failure."""
    guard = make_guard(clock, breaker=CircuitBreaker(2, 5.0, clock=clock), attempts=5)
    calls: list[int] = []

    def fn(attempts: Attempts) -> None:
        calls.append(attempts.number)
        raise ConnectTimeout("connect to db1 took longer than 0.5s")

    with pytest.raises(CircuitOpenError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2]  # two connect timeouts opened the breaker
    assert isinstance(info.value.__cause__, ConnectTimeout)
    assert guard.breaker.state is BreakerState.OPEN


async def test_connect_timeout_cut_by_the_deadline_is_final(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, breaker=CircuitBreaker(1, 5.0, clock=clock))
    calls: list[int] = []

    def fn(attempts: Attempts) -> None:
        calls.append(1)
        clock.advance(1.0)  # the connect used up the whole deadline
        raise ConnectTimeout("deadline")

    with deadline(1.0, clock=clock), pytest.raises(ConnectTimeout):
        await front.call(guard, fn)
    assert calls == [1]
    assert guard.breaker.state is BreakerState.CLOSED  # the server was not shown to be down


async def test_base_exceptions_are_not_classified(front: Front, clock: FakeClock) -> None:
    seen: list[BaseException] = []

    def spy(exc: BaseException) -> Classification:
        seen.append(exc)
        return LOADING

    guard = Guard("db1", "sql", spy, clock=clock, breaker=CircuitBreaker(None, 1.0))

    def fn(attempts: Attempts) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await front.call(guard, fn)
    assert seen == []


# -- deadline and retry_timeout ----------------------------------------------------------------
async def test_never_sleeps_past_the_deadline(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, backoff=Backoff(1.0, 100.0, 2.0, "none"))
    fn, calls = failing(CONNECT)
    with deadline(3.5, clock=clock) as d, pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    # t=0 fail, sleep 1 -> t=1 fail, sleep 2 -> t=3 fail; 3 + 4 >= 3.5: give up now, early.
    assert calls == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0]
    assert d.at is not None
    assert clock.now <= d.at
    assert_note(info.value, "would not fit in the deadline")
    assert guard.stats.snapshot()["give_ups"] == 1


async def test_gives_up_when_the_delay_would_end_exactly_at_the_deadline(
    front: Front, clock: FakeClock
) -> None:
    guard = make_guard(clock, backoff=Backoff(1.0, 1.0, 1.0, "none"))
    fn, calls = failing(CONNECT)
    with deadline(1.0, clock=clock), pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert calls == [1]  # waking up at the deadline leaves no time for an attempt
    assert clock.sleeps == []


async def test_attempt_time_counts_against_the_deadline(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, backoff=Backoff(0.1, 0.1, 1.0, "none"))
    calls: list[int] = []

    def fn(attempts: Attempts) -> None:
        calls.append(1)
        clock.advance(0.9)  # each attempt takes 0.9 s before failing
        raise FakeDBError(CONNECT)

    with deadline(2.5, clock=clock) as d, pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert len(calls) == 3  # 0.9 + 0.1 + 0.9 + 0.1 + 0.9 = 2.9: no room left for a 4th
    assert d.at is not None
    assert clock.now - d.at < 0.9  # only the last attempt's own duration overran


async def test_spent_deadline_raises_timeout_without_calling(
    front: Front, clock: FakeClock
) -> None:
    guard = make_guard(clock)
    fn, calls = failing("ok")
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(QueryTimeout, match="deadline exceeded after 0 attempt"):
            await front.call(guard, fn)
        with pytest.raises(ConnectTimeout):
            await front.call(guard, fn, timeout_error=ConnectTimeout)
        from sqlalchemy.exc import OperationalError

        from poolguard.errors import dropin_class

        kind = dropin_class(QueryTimeout, OperationalError)
        with pytest.raises(OperationalError) as info:
            await front.call(guard, fn, timeout_error=kind)
        assert isinstance(info.value, QueryTimeout)
    assert calls == []


async def test_deadline_passed_during_sleep_raises_timeout_chained(
    front: Front, clock: FakeClock
) -> None:
    # A real sleep may overshoot: begin() catches it and chains the last failure.
    guard = make_guard(clock, backoff=Backoff(0.1, 0.1, 1.0, "none"))
    fn, calls = failing(CONNECT)

    def oversleep(seconds: float) -> None:
        clock.sleep(seconds + 5.0)

    async def aoversleep(seconds: float) -> None:
        oversleep(seconds)

    async def call() -> Any:
        if front.kind == "sync":
            return guard.run_with(fn, sleep=oversleep)
        return await guard.arun_with(_async(fn), sleep=aoversleep)

    with deadline(1.0, clock=clock), pytest.raises(QueryTimeout) as info:
        await call()
    assert calls == [1]
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, FakeDBError)
    assert [r.reason for r in info.value.history] == ["connect_refused"]


def _async(fn: Callable[[Attempts], Any]) -> Callable[[Attempts], Any]:
    async def afn(attempts: Attempts) -> Any:
        return fn(attempts)

    return afn


async def test_retry_timeout_caps_total_time(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, timeout=2.5, backoff=Backoff(1.0, 1.0, 1.0, "none"))
    fn, calls = failing(CONNECT)
    start = clock.now
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    # t=0,1,2 attempts; 2 + 1 >= 2.5 -> give up
    assert calls == [1, 2, 3]
    assert clock.now - start <= 2.5
    assert_note(info.value, "retry timeout")


async def test_tighter_of_deadline_and_retry_timeout_wins(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, timeout=10.0, backoff=Backoff(1.0, 1.0, 1.0, "none"))
    fn, calls = failing(CONNECT)
    with deadline(1.5, clock=clock), pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert calls == [1, 2]


# -- budget and breaker ------------------------------------------------------------------------
async def test_budget_exhaustion_gives_up(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, budget=RetryBudget(0.0, capacity=2.0))
    fn, calls = failing(LOADING)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2, 3]
    assert_note(info.value, "retry budget is exhausted")
    snap = guard.stats.snapshot()
    assert (snap["budget_exhausted"], snap["give_ups"], snap["retries"]) == (1, 1, 2)
    fn2, calls2 = failing(LOADING)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn2)
    assert calls2 == [1]  # the next operation has no retry left at all


async def test_first_attempts_refill_the_budget(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, budget=RetryBudget(0.5, capacity=1.0))
    guard.budget.try_spend()
    assert guard.budget.tokens == 0.0
    fn, _ = failing("ok")
    await front.call(guard, fn)
    await front.call(guard, fn)
    assert guard.budget.tokens == 1.0


async def test_open_breaker_fails_fast_without_calling(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, breaker=CircuitBreaker(1, 30.0, clock=clock))
    guard.breaker.record_failure()
    fn, calls = failing("ok")
    with pytest.raises(CircuitOpenError) as info:
        await front.call(guard, fn)
    assert calls == []
    assert info.value.__cause__ is None
    snap = guard.stats.snapshot()
    assert snap["circuit_open_rejections"] == 1
    assert snap["breaker"] == {"state": "open", "opened": 1, "waits": 0}


async def test_breaker_opening_mid_loop_stops_the_retries(front: Front, clock: FakeClock) -> None:
    # Backoff delays shorter than the breaker's first open interval, and no time window to
    # wait in: once the breaker opens, the loop fails fast instead of retrying.
    guard = make_guard(
        clock,
        attempts=10,
        backoff=Backoff(0.01, 0.1, 2.0, "none"),
        breaker=CircuitBreaker(3, 30.0, clock=clock),
    )
    fn, calls = failing(CONNECT)
    with pytest.raises(CircuitOpenError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2, 3]
    err = info.value
    assert isinstance(err.__cause__, FakeDBError)
    assert err.attempts == 3
    assert len(err.history) == 3


async def test_breaker_bookkeeping(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, breaker=CircuitBreaker(3, 30.0, clock=clock), attempts=1)
    for outcome in (CONNECT, CONNECT, SYNTAX, CONNECT, CONNECT, LOST, CONNECT, CONNECT):
        fn, _ = failing(outcome)
        with pytest.raises((FakeDBError, AmbiguousResultError)):
            await front.call(guard, fn)
    # A syntax error or a lost reply means the server answered: the connect streak restarts.
    assert guard.breaker.state is BreakerState.CLOSED
    fn, _ = failing(CONNECT)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert guard.breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    fn, _ = failing("ok")
    assert await front.call(guard, fn) == "ok"  # the half-open probe
    assert guard.breaker.state is BreakerState.CLOSED
    assert guard.stats.snapshot()["breaker"] == {"state": "closed", "opened": 1, "waits": 0}


# -- make_error, hooks, logging ----------------------------------------------------------------
async def test_make_error_receives_give_up(front: Front, clock: FakeClock) -> None:
    seen: list[GiveUp] = []

    class DriverConnError(Exception):
        pass

    def make_error(g: GiveUp) -> BaseException:
        seen.append(g)
        return dropin(
            AmbiguousResultError if g.action is Action.AMBIGUOUS else QueryTimeout,
            DriverConnError,
            f"{g.pool}: {g.why}",
            attempts=g.attempts,
            history=g.history,
            hint=g.hint,
        )

    guard = make_guard(clock, attempts=2, make_error=make_error)
    fn, _ = failing(CONNECT)
    with pytest.raises(DriverConnError) as info:
        await front.call(guard, fn)
    g = seen[-1]
    assert (g.action, g.attempts, g.pool, g.classification) == (Action.RETRY, 2, "db1", CONNECT)
    assert g.why == "all 2 attempts failed"
    assert g.hint is not None
    assert "POOLGUARD_RETRY_ATTEMPTS" in g.hint
    assert [r.attempt for r in g.history] == [1, 2]
    assert info.value.__cause__ is g.error
    assert isinstance(info.value, QueryTimeout)

    fn, _ = failing(LOST)
    with pytest.raises(AmbiguousResultError) as ainfo:
        await front.call(guard, fn)
    assert seen[-1].action is Action.AMBIGUOUS
    assert isinstance(ainfo.value, DriverConnError)

    fn, _ = failing(SYNTAX)
    with pytest.raises(DriverConnError):
        await front.call(guard, fn)
    assert seen[-1].action is Action.FAIL
    assert seen[-1].why == "not safe to retry"


async def test_make_error_may_return_the_original(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, make_error=lambda g: g.error)
    fn, _ = failing(SYNTAX)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert info.value.__cause__ is None  # not chained to itself


async def test_hooks_fire_with_retry_events(front: Front, clock: FakeClock) -> None:
    events: list[RetryEvent] = []
    hooks = Hooks(on_retry=[events.append])
    guard = make_guard(clock, attempts=3, hooks=hooks)
    fn, _ = failing(CONNECT, LOADING, "ok")
    await front.call(guard, fn)
    assert [(e.pool, e.attempt, e.reason, e.delay) for e in events] == [
        ("db1", 1, "connect_refused", 0.1),
        ("db1", 2, "loading", 0.2),
    ]
    assert all(isinstance(e.error, FakeDBError) for e in events)


async def test_raising_hook_does_not_break_the_call(
    front: Front, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(event: object) -> None:
        raise RuntimeError("hook bug")

    breaker_events: list[object] = []
    hooks = Hooks(on_retry=[bad_hook], on_breaker=[bad_hook, breaker_events.append])
    guard = make_guard(clock, attempts=3, hooks=hooks, breaker=CircuitBreaker(1, 1.0, clock=clock))
    guard.breaker._on_change = guard._breaker_changed  # make_guard passes its own breaker
    fn, _ = failing(LOADING, "ok")
    with caplog.at_level(logging.ERROR, logger="poolguard"):
        assert await front.call(guard, fn) == "ok"
        guard.breaker.record_failure()
    assert any("hook" in r.getMessage() for r in caplog.records)
    assert len(breaker_events) == 1


async def test_retry_is_logged_with_structured_extras(
    front: Front, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    guard = make_guard(clock)
    fn, _ = failing(LOADING, "ok")
    with caplog.at_level(logging.INFO, logger="poolguard.sql"):
        await front.call(guard, fn)
    (record,) = [r for r in caplog.records if r.name == "poolguard.sql"]
    assert record.attempt == 1  # type: ignore[attr-defined]
    assert record.reason == "loading"  # type: ignore[attr-defined]
    assert record.delay == 0.1  # type: ignore[attr-defined]
    assert record.pool == "db1"  # type: ignore[attr-defined]


# -- jitter, testing mode ------------------------------------------------------------------
async def test_injected_rng_makes_sleeps_reproducible(front: Front, clock: FakeClock) -> None:
    backoff = Backoff(0.5, 10.0, 2.0, "full")
    guard = make_guard(clock, attempts=5, backoff=backoff)
    guard.rng = random.Random(99)
    fn, _ = failing(CONNECT)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn)
    rng = random.Random(99)
    assert clock.sleeps == [backoff.delay(n, rng) for n in range(1, 5)]


@pytest.mark.usefixtures("testing_mode")
async def test_set_testing_turns_sleeps_off(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=4, backoff=Backoff(5.0, 5.0, 1.0, "none"))
    fn, calls = failing(CONNECT)
    with pytest.raises(FakeDBError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2, 3, 4]
    assert clock.sleeps == []
    assert_note(info.value, "all 4 attempts failed")


# -- stats snapshot ----------------------------------------------------------------------------
async def test_stats_snapshot_counts(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=2)
    guard.stats.gauges = lambda: {"size": 4, "checked_out": 1, "idle": 3, "waiting": 0}
    for outcomes in ((LOADING, "ok"), (CONNECT,), (LOST,), (SYNTAX,), ("ok",)):
        fn, _ = failing(*outcomes)
        try:
            await front.call(guard, fn)
        except Exception:
            pass
    snap = guard.stats.snapshot()
    assert snap["requests"] == 5
    assert snap["retries"] == 2
    assert snap["retries_by_reason"] == {"loading": 1, "connect_refused": 1}
    assert snap["give_ups"] == 1
    assert snap["ambiguous"] == 1
    assert (snap["size"], snap["checked_out"], snap["idle"], snap["waiting"]) == (4, 1, 3, 0)
    assert (snap["name"], snap["backend"]) == ("db1", "sql")


# -- construction ------------------------------------------------------------------------------
def test_from_settings() -> None:
    from poolguard.config.settings import Settings

    settings = Settings(
        retry_attempts=4,
        retry_backoff_initial=0.2,
        retry_backoff_max=3.0,
        retry_backoff_multiplier=3.0,
        retry_jitter="equal",
        retry_timeout=7.0,
        retry_budget=None,
        breaker_failures=None,
    )
    guard = Guard.from_settings(settings, name="main", backend="sql", classify=classify)
    assert guard.policy == RetryPolicy(4, Backoff(0.2, 3.0, 3.0, "equal"), 7.0)
    assert guard.budget.unlimited
    assert guard.breaker.failures is None
    guard = Guard.from_settings(Settings(), name="main", backend="redis", classify=classify)
    assert guard.breaker.failures == 5
    assert guard.budget.ratio == 0.2
    assert guard.stats.backend == "redis"


def test_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        RetryPolicy(attempts=0)


async def test_run_and_arun_shortcuts(clock: FakeClock) -> None:
    guard = make_guard(clock)
    assert guard.run(lambda: 41) == 41

    async def answer() -> int:
        return 42

    assert await guard.arun(answer) == 42
    assert guard.stats.snapshot()["requests"] == 2


async def test_a_retried_success_leaves_no_reference_cycle(front: Front, clock: FakeClock) -> None:
    import gc
    import weakref

    guard = make_guard(clock)
    refs: list[weakref.ref[FakeDBError]] = []

    def tracked() -> FakeDBError:
        err = FakeDBError(LOADING)
        refs.append(weakref.ref(err))
        return err

    def fn(attempts: Attempts) -> str:
        if not refs:
            raise tracked()  # no local in fn's frame: the traceback must not pin the error
        return "ok"

    gc.disable()
    try:
        assert await front.call(guard, fn) == "ok"
        await asyncio.sleep(0)
        assert refs[0]() is None  # the failure was freed by refcounting, not left to the GC
    finally:
        gc.enable()


async def test_arun_result_is_a_coroutine_for_create_task(clock: FakeClock) -> None:
    guard = make_guard(clock)

    async def answer() -> int:
        return 7

    assert await asyncio.create_task(guard.arun(answer)) == 7
    assert await asyncio.wait_for(guard.arun(answer), 1.0) == 7


async def test_breaker_opened_by_a_failure_fails_fast_without_sleeping(
    front: Front, clock: FakeClock
) -> None:
    guard = make_guard(clock, attempts=5, breaker=CircuitBreaker(2, 30.0, clock=clock))
    fn, calls = failing(CONNECT)
    with pytest.raises(CircuitOpenError) as info:
        await front.call(guard, fn)
    assert calls == [1, 2]
    # Slept after the 1st failure, not after the one that opened it: with no deadline and no
    # retry window there is nothing to wait for the probe in.
    assert clock.sleeps == [0.1]
    err = info.value
    assert isinstance(err.__cause__, FakeDBError)
    assert err.attempts == 2
    assert [r.attempt for r in err.history] == [1, 2]
    assert "next probe in 0.2s" in str(err)  # the first open interval is short
    assert guard.stats.snapshot()["circuit_open_rejections"] == 1


async def test_breaker_reset_shorter_than_the_delay_lets_the_retry_probe(
    front: Front, clock: FakeClock
) -> None:
    guard = make_guard(
        clock,
        attempts=3,
        backoff=Backoff(1.0, 1.0, 1.0, "none"),
        breaker=CircuitBreaker(1, 0.5, clock=clock),
    )
    fn, calls = failing(CONNECT, "ok")
    assert await front.call(guard, fn) == "ok"  # woke up half-open and was the probe
    assert calls == [1, 2]
    assert guard.breaker.state is BreakerState.CLOSED


async def test_breaker_wait_within_the_retry_window_rides_out_a_restart(
    front: Front, clock: FakeClock
) -> None:
    """Connect failures are retried until the window ends, parked behind the breaker."""
    guard = make_guard(
        clock,
        attempts=3,  # connect-phase retries are bounded by time, not by this count
        timeout=10.0,
        breaker=CircuitBreaker(2, 5.0, clock=clock),
    )
    fn, calls = failing(CONNECT, CONNECT, CONNECT, CONNECT, CONNECT, "ok")
    assert await front.call(guard, fn) == "ok"
    assert calls == [1, 2, 3, 4, 5, 6]
    snap = guard.stats.snapshot()
    assert snap["circuit_open_rejections"] == 0
    assert guard.breaker.state is BreakerState.CLOSED
    # After the breaker opened (2nd failure) attempts were spaced by its growing interval.
    assert clock.sleeps[1:4] == pytest.approx([0.25, 0.5, 1.0])


async def test_breaker_wait_beyond_the_window_fails_fast(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, timeout=10.0, breaker=CircuitBreaker(1, 30.0, clock=clock))
    guard.breaker.record_failure()
    for _ in range(6):  # failed probes grow the open interval 0.25 -> 8 s, then capped at 30 s
        clock.advance(60.0)
        guard.breaker.before_call()
        guard.breaker.record_failure()
    fn, calls = failing("ok")
    with pytest.raises(CircuitOpenError):
        await front.call(guard, fn)  # the next probe (16 s away) does not fit in 10 s
    assert calls == []
    assert clock.sleeps == []


async def test_one_attempt_means_no_connect_retries_either(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=1, timeout=10.0)
    fn, calls = failing(CONNECT, "ok")
    with pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert calls == [1]
