"""Circuit breaker state machine, driven by a fake clock."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import pytest
from core_fakes import FakeClock

from poolguard.core.breaker import (
    FIRST_OPEN_INTERVAL,
    PROBE_POLL_INTERVAL,
    BreakerState,
    CircuitBreaker,
)
from poolguard.errors import CircuitOpenError, PoolguardError

Change = tuple[BreakerState, BreakerState]
T = TypeVar("T")


def elsewhere(fn: Callable[[], T]) -> T:
    """Call ``fn`` as another caller would: in a fresh context, holding no probe."""
    return contextvars.Context().run(fn)


def make(
    clock: FakeClock, failures: int = 3, reset: float = 5.0
) -> tuple[CircuitBreaker, list[Change]]:
    changes: list[Change] = []
    breaker = CircuitBreaker(
        failures, reset, clock=clock, name="db1", on_change=lambda o, n: changes.append((o, n))
    )
    return breaker, changes


def trip(breaker: CircuitBreaker) -> None:
    assert breaker.failures is not None
    for _ in range(breaker.failures):
        breaker.before_call()
        breaker.record_failure()


def test_starts_closed_and_lets_calls_through(clock: FakeClock) -> None:
    breaker, changes = make(clock)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(100):
        breaker.before_call()
    assert changes == []


def test_opens_after_n_consecutive_failures(clock: FakeClock) -> None:
    breaker, changes = make(clock, failures=3)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()  # still closed after N-1
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker, _ = make(clock, failures=3)
    for _ in range(10):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_fails_fast_while_open_without_calling_anything(clock: FakeClock) -> None:
    breaker, _ = make(clock, failures=2, reset=5.0)
    trip(breaker)
    clock.advance(0.05)
    assert breaker.admission() == pytest.approx(FIRST_OPEN_INTERVAL - 0.05)
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    err = info.value
    assert isinstance(err, PoolguardError)
    assert "db1" in str(err)
    assert "open" in str(err)
    assert "next probe in 0.2s" in str(err)
    assert "POOLGUARD_BREAKER_RESET" in str(err)
    clock.advance(0.19)
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    assert breaker.state is BreakerState.OPEN


def test_half_open_admits_exactly_one_probe(clock: FakeClock) -> None:
    breaker, changes = make(clock, failures=2, reset=5.0)
    trip(breaker)
    clock.advance(5.0)
    assert breaker.state is BreakerState.HALF_OPEN  # time alone makes it half-open
    breaker.before_call()  # the probe
    assert changes[-1] == (BreakerState.OPEN, BreakerState.HALF_OPEN)
    for _ in range(5):
        with pytest.raises(CircuitOpenError, match="half_open"):
            elsewhere(breaker.before_call)
    assert breaker.state is BreakerState.HALF_OPEN


def test_the_probe_holder_is_not_made_to_wait_on_its_own_probe(clock: FakeClock) -> None:
    # A unit of work admitted as the probe then checks out and runs statements, each asking
    # the breaker again from the same context: those nested calls belong to the probe.
    breaker, _ = make(clock, failures=1, reset=5.0)
    trip(breaker)
    clock.advance(5.0)
    probe_ctx = contextvars.copy_context()
    probe_ctx.run(breaker.before_call)  # the unit of work takes the probe
    for _ in range(3):
        assert probe_ctx.run(breaker.admission) is None  # its nested checkout / statements
        assert probe_ctx.run(breaker.admits_in) == 0.0
    assert elsewhere(breaker.admission) == PROBE_POLL_INTERVAL  # everyone else still polls
    # A child task of the operation inherits its context, hence the probe.
    assert probe_ctx.copy().run(breaker.admission) is None
    probe_ctx.run(breaker.record_failure)  # the probe failed: open again
    clock.advance(10.0)
    elsewhere(breaker.before_call)  # a new probe, taken by another caller
    # The old holder's context remembers an id that is over: it waits like anyone else.
    assert probe_ctx.run(breaker.admission) == PROBE_POLL_INTERVAL


def test_probe_success_closes(clock: FakeClock) -> None:
    breaker, changes = make(clock, failures=2, reset=5.0)
    trip(breaker)
    clock.advance(5.0)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    for _ in range(3):
        breaker.before_call()
    # Closed again means the full count is needed to reopen.
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_open_interval_doubles_per_failed_probe_up_to_reset(clock: FakeClock) -> None:
    # Short first, so a restart of a second or two is ridden out; a long outage settles at
    # one probe per ``reset`` seconds.
    breaker, changes = make(clock, failures=2, reset=1.0)
    trip(breaker)
    for interval in (0.25, 0.5, 1.0, 1.0):
        assert breaker.admits_in() == pytest.approx(interval)
        clock.advance(interval - 0.01)
        with pytest.raises(CircuitOpenError):
            breaker.before_call()
        clock.advance(0.01)
        breaker.before_call()  # the probe
        assert breaker.state is BreakerState.HALF_OPEN
        breaker.record_failure()  # one failure suffices in half-open
        assert breaker.state is BreakerState.OPEN
        assert changes[-1] == (BreakerState.HALF_OPEN, BreakerState.OPEN)
    clock.advance(1.0)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    trip(breaker)  # a success resets the interval to the first one
    assert breaker.admits_in() == pytest.approx(FIRST_OPEN_INTERVAL)


def test_stale_probe_slot_is_freed(clock: FakeClock) -> None:
    # A probe whose caller was cancelled never reports back; after another reset period a new
    # probe is admitted, so the breaker cannot wedge half-open forever.
    breaker, _ = make(clock, failures=1, reset=2.0)
    trip(breaker)
    clock.advance(2.0)
    elsewhere(breaker.before_call)  # probe 1, never reports
    clock.advance(1.9)
    with pytest.raises(CircuitOpenError):
        elsewhere(breaker.before_call)
    clock.advance(0.1)
    elsewhere(breaker.before_call)  # probe 2 admitted
    with pytest.raises(CircuitOpenError):
        elsewhere(breaker.before_call)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_late_failure_while_open_does_not_extend_it(clock: FakeClock) -> None:
    breaker, changes = make(clock, failures=2, reset=5.0)
    trip(breaker)
    clock.advance(3.0)
    breaker.record_failure()  # an in-flight call from before the breaker opened
    clock.advance(2.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert len(changes) == 1


def test_disabled_breaker_never_opens(clock: FakeClock) -> None:
    breaker = CircuitBreaker(None, 1.0, clock=clock)
    for _ in range(1000):
        breaker.record_failure()
        breaker.before_call()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()


def test_rejects_bad_failures() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        CircuitBreaker(0, 1.0)


def test_on_change_may_be_absent(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_admits_in(clock: FakeClock) -> None:
    breaker, _ = make(clock, failures=1, reset=5.0)
    assert breaker.admits_in() == 0.0  # closed
    assert breaker.admission() is None
    breaker.record_failure()
    assert breaker.admits_in() == pytest.approx(0.25)
    clock.advance(0.1)
    assert breaker.admits_in() == pytest.approx(0.15)
    with pytest.raises(CircuitOpenError, match=r"next probe in 0\.1s"):
        breaker.before_call()
    clock.advance(0.15)
    assert breaker.admits_in() == 0.0  # half-open with a free probe slot
    assert elsewhere(breaker.admission) is None  # the probe takes the slot
    clock.advance(1.0)
    # Others poll for the running probe's outcome instead of waiting for it to go stale.
    assert breaker.admits_in() == PROBE_POLL_INTERVAL
    assert breaker.admission() == PROBE_POLL_INTERVAL
    clock.advance(4.0)
    assert breaker.admits_in() == 0.0  # the probe went stale: its slot is free again
    breaker.record_success()
    assert breaker.admits_in() == 0.0
    assert CircuitBreaker(None, 1.0).admits_in() == 0.0
