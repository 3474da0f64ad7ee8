"""Breaker and budget shared by many threads and asyncio tasks.

The GIL switch interval is shrunk so threads interleave inside the critical sections rather
than running one after the other.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
from core_fakes import FakeClock

from poolguard.core.breaker import BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.disposition import Classification, Disposition
from poolguard.core.retry import Guard, RetryPolicy
from poolguard.errors import CircuitOpenError

THREADS = 16


@pytest.fixture(autouse=True)
def _tight_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # surfaced below: a thread must not fail silently
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# -- budget ---------------------------------------------------------------------------------
def test_budget_spends_exactly_the_tokens_it_has() -> None:
    budget = RetryBudget(0.5, capacity=1000.0)
    granted = [0] * THREADS
    barrier = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(100):
            granted[i] += budget.try_spend()

    run_threads(worker)
    assert sum(granted) == 1000  # 1600 asked, exactly the 1000 tokens granted
    assert budget.tokens == 0.0


def test_budget_tokens_never_negative_nor_over_capacity() -> None:
    budget = RetryBudget(0.2, capacity=5.0)
    stop = threading.Event()
    seen: list[float] = []
    granted = [0] * THREADS
    requests = [0] * THREADS

    def watcher() -> None:
        while not stop.is_set():
            seen.append(budget.tokens)
            stop.wait(0.0005)

    watch = threading.Thread(target=watcher)
    watch.start()

    def worker(i: int) -> None:
        for _ in range(400):
            budget.on_request()
            requests[i] += 1
            granted[i] += budget.try_spend()
            granted[i] += budget.try_spend()

    try:
        run_threads(worker)
    finally:
        stop.set()
        watch.join()
    assert all(0.0 <= t <= 5.0 for t in seen)
    assert 0.0 <= budget.tokens <= 5.0
    # Never more retries than the initial burst plus ratio x requests.
    assert sum(granted) <= 5.0 + 0.2 * sum(requests) + 1e-6


# -- breaker --------------------------------------------------------------------------------
def test_breaker_opens_exactly_once_under_a_failure_storm() -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    clock = FakeClock()
    breaker = CircuitBreaker(5, 60.0, clock=clock, on_change=lambda o, n: changes.append((o, n)))
    rejected = [0] * THREADS

    def worker(i: int) -> None:
        for _ in range(500):
            try:
                breaker.before_call()
            except CircuitOpenError:
                rejected[i] += 1
            else:
                breaker.record_failure()

    run_threads(worker)
    assert breaker.state is BreakerState.OPEN
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]
    # Once open, (almost) everything failed fast: at most the in-flight calls got through.
    assert sum(rejected) >= THREADS * 500 - 5 - THREADS


def test_exactly_one_probe_admitted_in_half_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock=clock)
    for _ in range(12):  # many rounds: one race is a weak test
        breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        clock.advance(10.0)
        admitted: list[int] = []
        barrier = threading.Barrier(THREADS)

        def worker(
            i: int, admitted: list[int] = admitted, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            try:
                breaker.before_call()
            except CircuitOpenError:
                return
            admitted.append(i)

        run_threads(worker)
        assert len(admitted) == 1
        breaker.record_failure()  # the probe failed: open again for the next round


def test_breaker_survives_a_mixed_hammering() -> None:
    """Random-ish interleaving of every operation: no error but CircuitOpenError, valid end."""
    breaker = CircuitBreaker(3, 0.001)  # real clock, tiny reset: every state is visited
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker._on_change = lambda o, n: changes.append((o, n))

    def worker(i: int) -> None:
        for k in range(1500):
            try:
                breaker.before_call()
            except CircuitOpenError:
                continue
            if (i + k) % 3:
                breaker.record_failure()
            else:
                breaker.record_success()

    run_threads(worker)
    allowed = {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.OPEN, BreakerState.CLOSED),  # a late success from an in-flight call
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    }
    assert set(changes) <= allowed
    assert (BreakerState.CLOSED, BreakerState.OPEN) in changes
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


# -- through the Guard: threads and tasks ---------------------------------------------------
def _connect_failure(exc: BaseException) -> Classification:
    return Classification(Disposition.RETRY, "connect_refused", connect_phase=True)


def _half_open_guard(clock: FakeClock) -> Guard:
    guard = Guard(
        "pool",
        "sql",
        _connect_failure,
        # No retry window: callers that find the probe running fail fast instead of polling.
        policy=RetryPolicy(attempts=1, timeout=None),
        breaker=CircuitBreaker(1, 5.0, clock=clock),
        clock=clock,
    )
    guard.breaker.record_failure()
    clock.advance(5.0)  # past the first open interval: half-open
    return guard


def test_one_probe_through_guard_run_from_threads() -> None:
    clock = FakeClock()
    guard = _half_open_guard(clock)
    calls: list[int] = []
    release = threading.Event()
    outcomes: list[str] = []
    barrier = threading.Barrier(THREADS)

    def probe() -> str:
        calls.append(1)
        release.wait(10)
        return "ok"

    def worker(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(guard.run(probe))
        except CircuitOpenError:
            outcomes.append("fast")
            if outcomes.count("fast") == THREADS - 1:
                release.set()

    run_threads(worker)
    assert len(calls) == 1
    assert sorted(outcomes) == ["fast"] * (THREADS - 1) + ["ok"]
    assert guard.breaker.state is BreakerState.CLOSED
    assert guard.stats.snapshot()["circuit_open_rejections"] == THREADS - 1


async def test_one_probe_through_guard_arun_from_tasks() -> None:
    clock = FakeClock()
    guard = _half_open_guard(clock)
    calls = 0
    release = asyncio.Event()

    async def probe() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "ok"

    async def task() -> str:
        try:
            return await guard.arun(probe)
        except CircuitOpenError:
            return "fast"

    tasks = [asyncio.create_task(task()) for _ in range(THREADS)]
    for _ in range(5):
        await asyncio.sleep(0)  # let every task reach before_call while the probe is pending
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(outcomes) == ["fast"] * (THREADS - 1) + ["ok"]
    assert guard.breaker.state is BreakerState.CLOSED


def test_the_probe_holders_nested_calls_go_through_others_wait() -> None:
    # run_transaction admitted as the half-open probe runs its checkout and statements through
    # the same Guard: they must not wait on the probe their own operation holds (that stalled
    # units of work for the probe's stale time, 10 s by default, on a healthy server).
    clock = FakeClock()
    guard = _half_open_guard(clock)
    others: list[str] = []

    def another_caller() -> None:
        try:
            others.append(guard.run(lambda: "other"))
        except CircuitOpenError:
            others.append("fast")

    def unit_of_work() -> str:
        t = threading.Thread(target=another_caller)  # a new thread is another caller
        t.start()
        t.join(10)
        statement = guard.run(lambda: "row")  # nested: same thread, same operation
        return guard.run(lambda: statement + "s")

    assert guard.run(unit_of_work) == "rows"
    assert others == ["fast"]
    assert clock.sleeps == []
    assert guard.breaker.state is BreakerState.CLOSED


async def test_the_probe_holders_nested_awaits_go_through_other_tasks_wait() -> None:
    clock = FakeClock()
    guard = _half_open_guard(clock)
    go = asyncio.Event()

    async def another_caller() -> str:  # created before the probe: it does not hold it
        await go.wait()
        try:
            return await guard.arun(_value("other"))
        except CircuitOpenError:
            return "fast"

    other = asyncio.create_task(another_caller())

    async def unit_of_work() -> str:
        go.set()
        outcome = await other  # the probe has not reported yet: the other task fails fast
        child = await asyncio.create_task(guard.arun(_value("row")))  # a child task: same op
        statement = await guard.arun(_value("s"))
        return child + statement + outcome

    assert await guard.arun(unit_of_work) == "rowsfast"
    assert guard.breaker.state is BreakerState.CLOSED


def _value(value: str) -> Callable[[], Awaitable[str]]:
    async def fn() -> str:
        return value

    return fn


@pytest.mark.usefixtures("testing_mode")
async def test_tasks_share_the_budget() -> None:
    attempts = 0

    def classify(exc: BaseException) -> Classification:
        return Classification(Disposition.RETRY, "loading")

    guard = Guard(
        "pool",
        "redis",
        classify,
        policy=RetryPolicy(attempts=5, timeout=None),
        budget=RetryBudget(0.0, capacity=7.0),
        breaker=CircuitBreaker(None, 1.0),
    )

    async def failing() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        raise ConnectionError("LOADING")

    results = await asyncio.gather(
        *(guard.arun(failing) for _ in range(THREADS)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert attempts == THREADS + 7  # first tries plus exactly the 7 budgeted retries
    assert guard.budget.tokens == 0.0
    snap = guard.stats.snapshot()
    assert snap["retries"] == 7
    assert snap["give_ups"] == THREADS
    assert snap["budget_exhausted"] >= THREADS - 7
