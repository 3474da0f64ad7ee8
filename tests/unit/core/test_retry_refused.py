"""Refusals by a server in the wrong role (read-only after a switchover) are retried without
charging the retry budget: nothing was executed, and a switchover's write window drained the
bucket (measured on a MariaDB pair). Attempts, backoff and the deadline still bound them."""

from __future__ import annotations

import pytest
from core_fakes import FakeClock
from test_retry import FakeDBError, Front, failing, make_guard

from poolguard.core.breaker import BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.disposition import Classification, Disposition, Scope

READ_ONLY = Classification(
    Disposition.RETRY, "read_only", disconnect=True, scope=Scope.POOL, refused=True
)
LOADING = Classification(Disposition.RETRY, "loading")


@pytest.fixture(params=["sync", "async"])
def front(request: pytest.FixtureRequest, clock: FakeClock) -> Front:
    return Front(request.param, clock)


async def test_refusals_do_not_spend_the_budget(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=10, budget=RetryBudget(0.0, capacity=2.0))
    fn, calls = failing(READ_ONLY, READ_ONLY, READ_ONLY, READ_ONLY, "ok")
    assert await front.call(guard, fn) == "ok"
    assert calls == [1, 2, 3, 4, 5]
    assert guard.budget.tokens == 2.0
    # The same budget still stops other retries (old code: the refusals above had drained it).
    fn2, calls2 = failing(LOADING)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn2)
    assert calls2 == [1, 2, 3]


async def test_refusals_are_bounded_by_attempts(front: Front, clock: FakeClock) -> None:
    guard = make_guard(clock, attempts=3, budget=RetryBudget(0.0, capacity=0.0))
    fn, calls = failing(READ_ONLY)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert calls == [1, 2, 3]


async def test_refusals_do_not_open_the_breaker(front: Front, clock: FakeClock) -> None:
    # The server is up and serves reads: an open breaker would fail them too.
    guard = make_guard(clock, attempts=5, breaker=CircuitBreaker(2, 30.0, clock=clock))
    fn, _ = failing(READ_ONLY)
    with pytest.raises(FakeDBError):
        await front.call(guard, fn)
    assert guard.breaker.state is BreakerState.CLOSED  # 5 refusals, threshold 2
