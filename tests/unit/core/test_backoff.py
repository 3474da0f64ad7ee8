"""Backoff: bounds for every jitter kind (hypothesis), distribution, determinism."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolguard.core.backoff import JITTER_KINDS, Backoff

initials = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)
maxes = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)
multipliers = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
retries = st.integers(min_value=1, max_value=5000)
seeds = st.integers(min_value=0, max_value=2**32)

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(initials, maxes, multipliers, retries)
def test_ceiling_is_exponential_and_capped(
    initial: float, cap: float, multiplier: float, retry: int
) -> None:
    b = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter="none")
    ceiling = b.ceiling(retry)
    assert 0.0 <= ceiling <= cap
    if retry > 1:
        assert ceiling >= b.ceiling(retry - 1)  # monotone non-decreasing
    assert b.ceiling(1) == min(cap, initial)


@FAST
@given(initials, maxes, multipliers, retries, seeds)
def test_full_jitter_within_zero_and_ceiling(
    initial: float, cap: float, multiplier: float, retry: int, seed: int
) -> None:
    b = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter="full")
    d = b.delay(retry, random.Random(seed))
    assert 0.0 <= d <= b.ceiling(retry)


@FAST
@given(initials, maxes, multipliers, retries, seeds)
def test_equal_jitter_within_half_and_ceiling(
    initial: float, cap: float, multiplier: float, retry: int, seed: int
) -> None:
    b = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter="equal")
    d = b.delay(retry, random.Random(seed))
    ceiling = b.ceiling(retry)
    assert ceiling / 2 <= d <= ceiling


@FAST
@given(
    initials,
    maxes,
    multipliers,
    retries,
    seeds,
    st.none() | st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
)
def test_decorrelated_within_initial_and_max(
    initial: float, cap: float, multiplier: float, retry: int, seed: int, previous: float | None
) -> None:
    b = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter="decorrelated")
    d = b.delay(retry, random.Random(seed), previous)
    assert d <= cap
    assert d >= min(cap, initial)
    last = initial if previous is None else max(previous, initial)
    assert d <= max(3 * last, initial)


@FAST
@given(initials, maxes, multipliers, retries)
def test_none_is_the_ceiling(initial: float, cap: float, multiplier: float, retry: int) -> None:
    b = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter="none")
    assert b.delay(retry, random.Random(0)) == b.ceiling(retry)


def test_huge_retry_numbers_do_not_overflow() -> None:
    b = Backoff(initial=0.05, max=2.0, multiplier=10.0)
    assert b.ceiling(10_000) == 2.0
    assert 0.0 <= b.delay(10_000, random.Random(1)) <= 2.0


@pytest.mark.parametrize("jitter", JITTER_KINDS)
def test_deterministic_with_a_seeded_rng(jitter: str) -> None:
    b = Backoff(jitter=jitter)  # type: ignore[arg-type]

    def schedule(seed: int) -> list[float]:
        rng = random.Random(seed)
        out: list[float] = []
        prev: float | None = None
        for n in range(1, 8):
            prev = b.delay(n, rng, prev)
            out.append(prev)
        return out

    assert schedule(7) == schedule(7)
    if jitter != "none":
        assert schedule(7) != schedule(8)


def test_full_jitter_is_spread_over_the_whole_range() -> None:
    # Full jitter should look uniform on [0, cap): mean ~ cap/2, both halves populated.
    b = Backoff(initial=1.0, max=1.0, jitter="full")
    rng = random.Random(42)
    samples = [b.delay(1, rng) for _ in range(4000)]
    assert statistics.fmean(samples) == pytest.approx(0.5, abs=0.03)
    low = sum(1 for s in samples if s < 0.5)
    assert 0.45 < low / len(samples) < 0.55
    deciles = [sum(1 for s in samples if k / 10 <= s < (k + 1) / 10) for k in range(10)]
    assert min(deciles) > 300  # every tenth of the range gets its share (~400)


def test_equal_jitter_mean_is_three_quarters_of_the_ceiling() -> None:
    b = Backoff(initial=2.0, max=2.0, jitter="equal")
    rng = random.Random(3)
    samples = [b.delay(1, rng) for _ in range(4000)]
    assert statistics.fmean(samples) == pytest.approx(1.5, abs=0.05)


def test_decorrelated_grows_from_previous() -> None:
    b = Backoff(initial=0.1, max=100.0, jitter="decorrelated")
    rng = random.Random(5)
    samples = [b.delay(2, rng, previous=10.0) for _ in range(2000)]
    assert all(0.1 <= s <= 30.0 for s in samples)
    assert statistics.fmean(samples) == pytest.approx((0.1 + 30.0) / 2, rel=0.05)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="initial and max"):
        Backoff(initial=-1)
    with pytest.raises(ValueError, match="initial and max"):
        Backoff(max=-0.1)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(multiplier=0.5)
    with pytest.raises(ValueError, match="unknown jitter"):
        Backoff(jitter="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start at 1"):
        Backoff().ceiling(0)
