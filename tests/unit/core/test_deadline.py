"""Deadline arithmetic with a fake clock; nesting only shrinks; ContextVar isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest
from core_fakes import FakeClock

from poolguard.core.deadline import current_deadline, deadline, effective_timeout, remaining
from poolguard.errors import ConnectTimeout, PoolTimeout, QueryTimeout, TransactionTimeout


def test_no_deadline_by_default(clock: FakeClock) -> None:
    assert current_deadline() is None
    assert remaining(clock) is None
    assert effective_timeout(None, clock=clock) is None
    assert effective_timeout(3.0, clock=clock) == 3.0


def test_deadline_is_absolute_and_restored(clock: FakeClock) -> None:
    with deadline(2.5, clock=clock) as d:
        assert d.at == 1002.5
        assert current_deadline() == 1002.5
        assert remaining(clock) == 2.5
        clock.advance(1.0)
        assert remaining(clock) == 1.5
        assert d.remaining() == 1.5
    assert current_deadline() is None


def test_remaining_goes_negative_after_expiry(clock: FakeClock) -> None:
    with deadline(1.0, clock=clock) as d:
        clock.advance(3.0)
        assert remaining(clock) == -2.0
        assert d.remaining() == -2.0


def test_nested_deadline_only_shrinks(clock: FakeClock) -> None:
    with deadline(1.0, clock=clock):
        with deadline(10.0, clock=clock) as inner:
            assert inner.at == 1001.0  # the outer one still rules
            assert remaining(clock) == 1.0
        with deadline(0.25, clock=clock) as tighter:
            assert tighter.at == 1000.25
            with deadline(5.0, clock=clock):
                assert current_deadline() == 1000.25
            assert current_deadline() == 1000.25
        assert current_deadline() == 1001.0  # restored after the inner blocks


def test_detached_deadline_is_a_new_root(clock: FakeClock) -> None:
    """A job started from a request gets its own budget, not the request's remainder."""
    with deadline(1.0, clock=clock):
        with deadline(10.0, detach=True, clock=clock) as job:
            assert job.at == 1010.0
            with deadline(20.0, clock=clock) as inner:  # inside the job, still only shrinks
                assert inner.at == 1010.0
        assert current_deadline() == 1001.0  # the request's deadline is back
        with deadline(None, detach=True, clock=clock) as unbounded:
            assert unbounded.at is None
            assert current_deadline() is None


def test_nested_deadline_computed_when_entered(clock: FakeClock) -> None:
    with deadline(5.0, clock=clock):
        clock.advance(4.0)
        with deadline(0.5, clock=clock) as inner:  # now + 0.5 = 1004.5 < 1005
            assert inner.at == 1004.5


def test_none_keeps_outer_and_adds_nothing(clock: FakeClock) -> None:
    with deadline(None, clock=clock) as d:
        assert d.at is None
        assert current_deadline() is None
        assert d.remaining() is None
    with deadline(2.0, clock=clock), deadline(None, clock=clock) as inner:
        assert inner.at == 1002.0


def test_zero_and_negative(clock: FakeClock) -> None:
    with deadline(0, clock=clock), pytest.raises(QueryTimeout):
        effective_timeout(1.0, clock=clock)
    with pytest.raises(ValueError, match=">= 0"):
        deadline(-1)


def test_restored_when_the_block_raises(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError), deadline(1.0, clock=clock):
        raise RuntimeError("boom")
    assert current_deadline() is None


def test_effective_timeout_is_min_of_configured_and_remaining(clock: FakeClock) -> None:
    with deadline(2.0, clock=clock):
        assert effective_timeout(5.0, clock=clock) == 2.0
        assert effective_timeout(0.5, clock=clock) == 0.5
        assert effective_timeout(None, clock=clock) == 2.0
        clock.advance(1.75)
        assert effective_timeout(5.0, clock=clock) == pytest.approx(0.25)


@pytest.mark.parametrize("error", [QueryTimeout, ConnectTimeout, PoolTimeout, TransactionTimeout])
def test_effective_timeout_raises_the_requested_error_when_spent(
    clock: FakeClock, error: type[QueryTimeout]
) -> None:
    with deadline(1.0, clock=clock):
        clock.advance(1.0)  # exactly spent counts as spent
        with pytest.raises(error) as info:
            effective_timeout(5.0, what="connect", error=error, clock=clock)
    assert isinstance(info.value, TimeoutError)
    assert "before the connect could start" in str(info.value)
    assert info.value.hint


async def test_async_context_manager(clock: FakeClock) -> None:
    async with deadline(3.0, clock=clock) as d:
        assert current_deadline() == d.at == 1003.0
        await asyncio.sleep(0)
        assert current_deadline() == 1003.0
    assert current_deadline() is None


async def test_tasks_are_isolated(clock: FakeClock) -> None:
    seen: dict[str, float | None] = {}
    started = asyncio.Event()
    release = asyncio.Event()

    async def with_own_deadline(name: str, seconds: float) -> None:
        async with deadline(seconds, clock=clock):
            started.set()
            await release.wait()
            seen[name] = current_deadline()

    async def without() -> None:
        await started.wait()
        seen["bare"] = current_deadline()
        release.set()

    await asyncio.gather(with_own_deadline("a", 1.0), with_own_deadline("b", 2.0), without())
    assert seen == {"a": 1001.0, "b": 1002.0, "bare": None}
    assert current_deadline() is None


async def test_task_inherits_the_deadline_it_was_created_under(clock: FakeClock) -> None:
    async def child() -> float | None:
        with deadline(10.0, clock=clock):  # may only shrink the inherited one
            return current_deadline()

    async with deadline(1.0, clock=clock):
        task = asyncio.create_task(child())
    # The deadline was left before the task ran: the task still sees its copy.
    assert await task == 1001.0


def test_threads_are_isolated(clock: FakeClock) -> None:
    barrier = threading.Barrier(8)
    seen: dict[int, tuple[float | None, float | None]] = {}

    def worker(i: int) -> None:
        before = current_deadline()  # a new thread starts with an empty context
        with deadline(float(i), clock=clock):
            barrier.wait()
            seen[i] = (before, current_deadline())

    with deadline(0.5, clock=clock):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert current_deadline() == 1000.5
    assert seen == {i: (None, 1000.0 + i) for i in range(8)}
