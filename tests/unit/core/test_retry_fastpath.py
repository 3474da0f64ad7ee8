"""Guard.first_attempt / resume_with: the loop-free first attempt must decide like run_with.

Each scenario runs twice — through ``run_with`` and through the fast path an integration uses
(``first_attempt`` → call → ``resume_with`` on failure) — and both must agree on the outcome,
the attempt numbers ``fn`` saw, the sleeps, and the counters.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from core_fakes import FakeClock

from poolguard.core.backoff import Backoff
from poolguard.core.breaker import CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.deadline import deadline
from poolguard.core.disposition import Classification, Disposition, Operation, Scope
from poolguard.core.retry import Attempts, FirstAttempt, Guard, RetryPolicy
from poolguard.core.stats import PoolStats
from poolguard.errors import AmbiguousResultError, QueryTimeout

CONNECT = Classification(Disposition.RETRY, "connect_refused", scope=Scope.POOL, connect_phase=True)
LOST = Classification(Disposition.RETRY_IF_IDEMPOTENT, "connection_lost", disconnect=True)
SYNTAX = Classification(Disposition.FAIL, "syntax_error")


class Boom(Exception):
    def __init__(self, c: Classification) -> None:
        super().__init__(c.reason)
        self.c = c


def make_guard(clock: FakeClock, breaker: CircuitBreaker | None = None) -> Guard:
    return Guard(
        "db1",
        "sql",
        lambda e: e.c if isinstance(e, Boom) else Classification(Disposition.FAIL, "other"),
        policy=RetryPolicy(attempts=3, backoff=Backoff(0.1, 1.0, 2.0, "none"), timeout=10.0),
        budget=RetryBudget(0.2),
        breaker=breaker or CircuitBreaker(5, 5.0, clock=clock),
        stats=PoolStats("db1", "sql"),
        clock=clock,
        rng=random.Random(0),
    )


def script(*outcomes: object) -> tuple[Callable[[Attempts], Any], list[int]]:
    seen: list[int] = []

    def fn(attempts: Attempts) -> Any:
        seen.append(attempts.number)
        out = outcomes[min(len(seen), len(outcomes)) - 1]
        if isinstance(out, Classification):
            raise Boom(out)
        return out

    return fn, seen


def via_run_with(guard: Guard, clock: FakeClock, fn: Any, op: Operation) -> Any:
    return guard.run_with(fn, op, sleep=clock.sleep)


def via_fast_path(guard: Guard, clock: FakeClock, fn: Any, op: Operation) -> Any:
    started = guard.first_attempt()
    if started is None:
        return guard.run_with(fn, op, sleep=clock.sleep)
    first = guard._resumed(op, QueryTimeout, started)  # what fn sees on the first call
    try:
        result = fn(first)
    except Exception as exc:
        failure = exc
    else:
        guard.breaker.record_success()
        return result
    return guard.resume_with(fn, failure, started, op, sleep=clock.sleep)


SCENARIOS = {
    "ok": ((42,), Operation(), 42),
    "reconnect_then_ok": ((CONNECT, CONNECT, "ok"), Operation(), "ok"),
    "lost_idempotent_read": ((LOST, 7), Operation(idempotent=True), 7),
    "lost_write_is_ambiguous": ((LOST,), Operation(), AmbiguousResultError),
    "syntax_fails_at_once": ((SYNTAX,), Operation(), Boom),
    "attempts_exhausted": ((LOST,), Operation(idempotent=True), Boom),
}


def run(path: Any, outcomes: tuple[object, ...], op: Operation) -> tuple[Any, ...]:
    clock = FakeClock()
    guard = make_guard(clock)
    fn, seen = script(*outcomes)
    try:
        result: Any = path(guard, clock, fn, op)
    except Exception as exc:
        result = type(exc)
    snap = guard.stats.snapshot()
    return result, seen, clock.sleeps, snap["requests"], snap["retries"], snap["ambiguous"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fast_path_decides_like_run_with(name: str) -> None:
    outcomes, op, expected = SCENARIOS[name]
    slow = run(via_run_with, outcomes, op)
    fast = run(via_fast_path, outcomes, op)
    assert fast[0] == expected or (isinstance(expected, type) and issubclass(fast[0], expected))
    assert fast == slow


def test_first_attempt_declines_when_the_deadline_is_spent() -> None:
    clock = FakeClock()
    guard = make_guard(clock)
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        assert guard.first_attempt() is None
    assert guard.stats.snapshot()["requests"] == 0  # run_with does the counting then


def test_first_attempt_declines_unless_the_breaker_is_closed() -> None:
    clock = FakeClock()
    guard = make_guard(clock, breaker=CircuitBreaker(1, 5.0, clock=clock))
    guard.breaker.record_failure()
    assert guard.first_attempt() is None
    clock.advance(60.0)  # half-open: the probe must go through run_with's admission
    assert guard.first_attempt() is None


def test_first_attempt_credits_the_budget_and_counts_once() -> None:
    clock = FakeClock()
    guard = make_guard(clock)
    guard.budget.try_spend()
    before = guard.budget.tokens
    assert guard.first_attempt() == clock.now
    assert guard.budget.tokens == pytest.approx(before + 0.2)
    assert guard.stats.snapshot()["requests"] == 1


def _async_paths() -> tuple[Any, Any]:
    def sleeper(clock: FakeClock) -> Any:
        async def sleep(seconds: float) -> None:
            clock.sleep(seconds)

        return sleep

    def wrap(fn: Any) -> Any:
        async def afn(attempts: Any) -> Any:
            return fn(attempts)

        return afn

    def via_arun_with(guard: Guard, clock: FakeClock, fn: Any, op: Operation) -> Any:
        return asyncio.run(guard.arun_with(wrap(fn), op, sleep=sleeper(clock)))

    def via_async_fast_path(guard: Guard, clock: FakeClock, fn: Any, op: Operation) -> Any:
        sleep = sleeper(clock)

        # As the Redis adapter does it: a FirstAttempt (no loop state) for the first call.
        async def go() -> Any:
            started = guard.first_attempt()
            assert started is not None
            first = FirstAttempt(op)
            try:
                result = await wrap(fn)(first)
            except Exception as exc:
                failure = exc
            else:
                guard.breaker.record_success()
                return result
            return await guard.aresume_with(wrap(fn), failure, started, first.op, sleep=sleep)

        return asyncio.run(go())

    return via_arun_with, via_async_fast_path


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_async_fast_path_decides_like_arun_with(name: str) -> None:
    outcomes, op, expected = SCENARIOS[name]
    slow_path, fast_path = _async_paths()
    slow = run(slow_path, outcomes, op)
    fast = run(fast_path, outcomes, op)
    assert fast[0] == expected or (isinstance(expected, type) and issubclass(fast[0], expected))
    assert fast == slow
    assert fast == run(via_run_with, outcomes, op)  # and like the sync loop


def test_first_attempt_refills_a_spent_budget_up_to_its_capacity() -> None:
    guard = make_guard(FakeClock())
    guard.budget = RetryBudget(0.5, capacity=1.0)
    assert guard.budget.try_spend()
    for expected in (0.5, 1.0, 1.0):
        assert guard.first_attempt() is not None
        assert guard.budget.tokens == expected


def test_first_attempt_with_the_breaker_disabled_always_admits() -> None:
    clock = FakeClock()
    guard = make_guard(clock, breaker=CircuitBreaker(None, 5.0, clock=clock))
    guard.breaker.record_failure()  # ignored by a disabled breaker
    assert guard.first_attempt() is not None
    guard.breaker.record_success()
    assert guard.breaker.state.value == "closed"
