"""Live reconfiguration in the core: Guard.reconfigure, and breaker/budget state carrying over."""

from __future__ import annotations

import pytest
from core_fakes import FakeClock

from poolguard.config.settings import Settings
from poolguard.core.breaker import BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.disposition import Classification, Disposition
from poolguard.core.retry import Guard, policy_from_settings

RETRY = Classification(Disposition.RETRY, "admin_shutdown", disconnect=True)


class Lost(Exception):
    pass


def classify(exc: BaseException) -> Classification:
    return RETRY if isinstance(exc, Lost) else Classification(Disposition.FAIL, "other")


def make_guard(clock: FakeClock, **settings: object) -> Guard:
    base = Settings(retry_backoff_initial=0.0, **settings)  # type: ignore[arg-type]
    return Guard.from_settings(base, name="db", backend="postgres", classify=classify, clock=clock)


def test_an_operation_keeps_the_policy_it_began_with() -> None:
    clock = FakeClock()
    guard = make_guard(clock, retry_attempts=3)
    attempts = guard.attempts()
    assert attempts.begin() == 0.0
    guard.reconfigure(Settings(retry_attempts=1))
    assert attempts.failed(Lost()) >= 0.0  # began with 3 attempts: retried
    fresh = guard.attempts()
    fresh.begin()
    with pytest.raises(Lost):
        fresh.failed(Lost())  # began after: 1 attempt, no retry


def test_the_policy_is_replaced_whole_and_derived_guards_follow() -> None:
    guard = make_guard(FakeClock(), retry_attempts=3, retry_timeout=10.0)
    unit = guard.derive(classify)
    fixed = guard.derive(classify, attempts=7)
    old = guard.policy
    new = Settings(retry_attempts=5, retry_timeout=2.0)
    guard.reconfigure(new)
    assert guard.policy is not old
    assert old.attempts == 3  # the old object was not mutated (in-flight operations hold it)
    assert guard.policy == policy_from_settings(new)
    assert unit.policy is guard.policy
    assert (fixed.policy.attempts, fixed.policy.timeout) == (7, 2.0)


def test_an_open_breaker_stays_open_with_new_thresholds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    breaker.reconfigure(5, 0.1)
    assert breaker.state is BreakerState.OPEN
    assert (breaker.failures, breaker.reset) == (5, 0.1)
    clock.advance(0.1)  # the open interval is capped by the new reset
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_lower_threshold_counts_the_failures_already_seen() -> None:
    breaker = CircuitBreaker(5, 10.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.reconfigure(3, 10.0)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_disabling_the_breaker_closes_it() -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        1, 10.0, clock=FakeClock(), on_change=lambda o, n: changes.append((o, n))
    )
    breaker.record_failure()
    breaker.reconfigure(None, 10.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.admission() is None
    assert changes[-1] == (BreakerState.OPEN, BreakerState.CLOSED)
    with pytest.raises(ValueError):
        breaker.reconfigure(0, 10.0)


def test_budget_tokens_carry_over() -> None:
    budget = RetryBudget(0.5, capacity=2.0)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    budget.reconfigure(None)  # unlimited
    assert budget.try_spend()
    budget.reconfigure(0.5)
    assert not budget.try_spend()  # still empty: the change did not refill it
    budget.on_request()
    budget.on_request()
    assert budget.try_spend()


def test_guard_reconfigure_reaches_breaker_and_budget() -> None:
    guard = make_guard(FakeClock())
    guard.reconfigure(Settings(breaker_failures=None, retry_budget=None, breaker_reset=3.0))
    assert guard.breaker.failures is None
    assert guard.breaker.reset == 3.0
    assert guard.budget.unlimited
