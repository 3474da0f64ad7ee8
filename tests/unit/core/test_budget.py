"""Retry budget (token bucket) accounting."""

from __future__ import annotations

import pytest

from poolguard.core.budget import DEFAULT_CAPACITY, RetryBudget


def test_starts_full_and_allows_a_burst_of_capacity() -> None:
    budget = RetryBudget(0.1, capacity=3.0)
    assert budget.tokens == 3.0
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    assert budget.tokens == 0.0


def test_requests_refill_at_ratio_and_cap_at_capacity() -> None:
    budget = RetryBudget(0.25, capacity=2.0)
    for _ in range(2):
        assert budget.try_spend()
    assert not budget.try_spend()
    for _ in range(3):
        budget.on_request()
    assert budget.tokens == pytest.approx(0.75)
    assert not budget.try_spend()  # a fraction of a token is not a retry
    budget.on_request()
    assert budget.try_spend()
    assert budget.tokens == pytest.approx(0.0)
    for _ in range(100):
        budget.on_request()
    assert budget.tokens == 2.0


def test_steady_state_retries_are_bounded_by_ratio() -> None:
    budget = RetryBudget(0.2, capacity=DEFAULT_CAPACITY)
    allowed = 0
    requests = 1000
    for _ in range(requests):
        budget.on_request()
        # Every request fails and wants to retry twice: a retry storm without a budget.
        allowed += budget.try_spend()
        allowed += budget.try_spend()
    assert allowed <= requests * 0.2 + DEFAULT_CAPACITY
    assert allowed >= requests * 0.2 - 1
    assert budget.tokens >= 0.0


def test_zero_ratio_only_allows_the_burst() -> None:
    budget = RetryBudget(0.0, capacity=2.0)
    for _ in range(50):
        budget.on_request()
    assert sum(budget.try_spend() for _ in range(10)) == 2


def test_unlimited() -> None:
    budget = RetryBudget(None)
    assert budget.unlimited
    budget.on_request()
    assert all(budget.try_spend() for _ in range(10_000))
    assert not RetryBudget(0.1).unlimited


def test_rejects_negative_ratio() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        RetryBudget(-0.1)
