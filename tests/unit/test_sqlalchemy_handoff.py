"""The fair queues of the guarded SQLAlchemy queue pools (pure logic of
``poolguard.integrations.sqlalchemy._handoff``; the pools on a real server:
tests/integration/postgres/test_pool_fairness.py).

Orders are made deterministic with the queue's own ``waiting`` count (a waiter is counted once it
is queued), never with sleeps or timings.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty, Full

from poolguard.integrations.sqlalchemy import _handoff
from poolguard.integrations.sqlalchemy._handoff import CREATE, AsyncFairQueue, FairQueue

HANG_GUARD = 10.0  # seconds: only to fail instead of hanging, never a performance bound


def until(predicate: Callable[[], bool]) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, "condition never became true"
        time.sleep(0.001)


def full_queue(size: int = 1, *, lifo: bool = False, max_overflow: int = 0) -> Any:
    """A queue as a QueuePool of ``size`` sets it up, with every connection checked out."""
    q = FairQueue(size, use_lifo=lifo)
    q.set_overflow(-size)
    q.set_max_overflow(max_overflow)
    for _ in range(size + max_overflow):
        assert q.take() is CREATE
    assert q.take() is None
    return q


class Waiters:
    """Threads each doing one ``wait(timeout)``, started one at a time, in a known queue order."""

    def __init__(self, q: FairQueue) -> None:
        self.q = q
        self.got: dict[str, Any] = {}
        self.order: list[str] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def start(self, name: str, timeout: float | None = HANG_GUARD) -> None:
        before = self.q.waiting

        def run() -> None:
            try:
                item = self.q.wait(timeout)
            except Empty as exc:
                item = exc
            with self.lock:
                self.got[name] = item
                self.order.append(name)

        t = threading.Thread(target=run)
        self.threads.append(t)
        t.start()
        until(lambda: self.q.waiting == before + 1)  # queued: the next one queues behind it

    def join(self) -> None:
        for t in self.threads:
            t.join(HANG_GUARD)
            assert not t.is_alive()


def test_returned_records_go_to_waiters_in_arrival_order() -> None:
    q = full_queue(1)
    w = Waiters(q)
    for name in "abcde":
        w.start(name)
    for i in range(5):
        q.put(f"rec{i}")
    w.join()
    assert w.got == {"a": "rec0", "b": "rec1", "c": "rec2", "d": "rec3", "e": "rec4"}
    assert q.qsize() == 0
    assert q.waiting == 0


def test_a_returning_thread_cannot_take_back_what_a_waiter_is_owed() -> None:
    q = full_queue(1)
    w = Waiters(q)
    w.start("waiter")
    q.put("rec")
    # Right after put(), from the returning thread: nothing to take, not even room.
    assert q.take() is None
    with pytest.raises(Empty):
        q.get(False)
    w.join()
    assert w.got == {"waiter": "rec"}


def test_lifo_applies_to_idle_records_never_to_waiters() -> None:
    q = full_queue(2, lifo=True)
    w = Waiters(q)
    w.start("first")
    w.start("second")
    q.put("r1")
    q.put("r2")
    w.join()
    assert w.got == {"first": "r1", "second": "r2"}
    q.put("r1")
    q.put("r2")
    assert q.take() == "r2"  # the warmest idle record first


def test_a_timed_out_waiter_leaves_no_ghost() -> None:
    q = full_queue(1)
    w = Waiters(q)
    w.start("impatient", timeout=0.05)
    w.start("patient")
    until(lambda: "impatient" in w.got)
    assert isinstance(w.got["impatient"], Empty)
    assert q.waiting == 1
    q.put("rec")  # to the patient one, not to the ghost of the impatient one
    w.join()
    assert w.got["patient"] == "rec"


def late_waiter(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """The next waiter made wakes "late": ``meanwhile()`` runs once it is queued, then its
    wait times out (the race between a hand-off and a timeout, made deterministic)."""

    class LateLock:
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            monkeypatch.undo()  # the waiters meanwhile() makes are real ones
            meanwhile()
            return False

        def release(self) -> None:
            pass

    class LateWaiter(_handoff._Waiter):
        def __init__(self) -> None:
            self.item = _handoff._NOTHING
            self.lock = LateLock()  # type: ignore[assignment]

    monkeypatch.setattr(_handoff, "_Waiter", LateWaiter)


def test_a_record_handed_to_a_waiter_that_just_timed_out_goes_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = full_queue(1)
    w = Waiters(q)

    def meanwhile() -> None:
        w.start("next")
        q.put("rec")  # handed to the late waiter, the oldest

    late_waiter(monkeypatch, meanwhile)
    with pytest.raises(Empty):
        q.wait(1.0)
    w.join()
    assert w.got == {"next": "rec"}


def test_a_record_handed_to_the_last_waiter_that_just_timed_out_goes_back_to_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = full_queue(1)
    late_waiter(monkeypatch, lambda: q.put("rec"))
    with pytest.raises(Empty):
        q.wait(1.0)
    assert (q.qsize(), q.waiting) == (1, 0)


def test_a_slot_handed_to_a_waiter_that_just_timed_out_goes_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = full_queue(1)
    w = Waiters(q)

    def meanwhile() -> None:
        w.start("next")
        q.release_slot()  # a connect failed: its slot handed to the late waiter, the oldest

    late_waiter(monkeypatch, meanwhile)
    with pytest.raises(Empty):
        q.wait(1.0)
    w.join()
    assert w.got == {"next": CREATE}
    assert q.overflow == 0  # the slot changed hands twice: neither freed nor lost


def test_freed_capacity_wakes_the_oldest_waiter() -> None:
    """A connect that failed frees its slot: a waiter must get it, not sleep to its timeout."""
    q = full_queue(2)
    w = Waiters(q)
    w.start("a")
    w.start("b")
    q.release_slot()
    until(lambda: "a" in w.got)
    assert w.got == {"a": CREATE}
    assert q.waiting == 1
    assert q.overflow == 0
    q.put("rec")
    w.join()
    assert w.got["b"] == "rec"


def test_freed_capacity_without_waiters_is_room() -> None:
    q = full_queue(1)
    q.release_slot()
    assert q.overflow == -1
    assert q.take() is CREATE
    assert q.take_slot() is False


def test_dispose_resetting_the_counter_grants_room_to_waiters() -> None:
    q = full_queue(2)
    w = Waiters(q)
    for name in "abc":
        w.start(name)
    q.set_overflow(-2)  # QueuePool.dispose(): "0 - size()"
    until(lambda: len(w.got) == 2)
    assert w.got == {"a": CREATE, "b": CREATE}
    assert q.overflow == 0
    assert q.waiting == 1
    q.put("rec")
    w.join()
    assert w.got["c"] == "rec"


def test_queuecommon_interface_as_queuepool_uses_it() -> None:
    q = FairQueue(2)
    q.set_overflow(-2)
    q.set_max_overflow(1)
    assert (q.maxsize, q.use_lifo, q.qsize(), q.empty(), q.full()) == (2, False, 0, True, False)
    q.put("a")
    q.put("b", False)
    assert q.full()
    with pytest.raises(Full):  # QueuePool closes the record and frees its slot
        q.put("c", False)
    assert q.get(False) == "a"  # dispose() drains this way
    assert q.get_nowait() == "b"
    with pytest.raises(Empty):
        q.get(False)


def test_unbounded_overflow_never_waits() -> None:
    q = FairQueue(0)  # QueuePool(pool_size=0): max_overflow -1
    q.set_overflow(0)
    q.set_max_overflow(-1)
    assert all(q.take() is CREATE for _ in range(100))
    q.put("a")  # maxsize 0: never full
    assert q.qsize() == 1


def test_zero_timeout_does_not_queue() -> None:
    q = full_queue(1)
    with pytest.raises(Empty):
        q.wait(0)
    assert q.waiting == 0


# --- asyncio -------------------------------------------------------------------------------


def full_async_queue(size: int = 1) -> AsyncFairQueue:
    q = AsyncFairQueue(size)
    q.set_overflow(-size)
    q.set_max_overflow(0)
    for _ in range(size):
        assert q.take() is CREATE
    return q


async def waiting_task(q: AsyncFairQueue, timeout: float | None = HANG_GUARD) -> asyncio.Task[Any]:
    """A task blocked in ``wait`` (through a greenlet, as SQLAlchemy's asyncio pool calls it)."""
    before = q.waiting
    task = asyncio.ensure_future(greenlet_spawn(q.wait, timeout))
    while q.waiting == before:
        await asyncio.sleep(0)
    return task


async def test_async_fifo_hand_off() -> None:
    q = full_async_queue(1)
    tasks = [await waiting_task(q) for _ in range(50)]
    for i in range(50):
        q.put(i)
    assert await asyncio.gather(*tasks) == list(range(50))


async def test_async_returning_task_cannot_take_back() -> None:
    q = full_async_queue(1)
    task = await waiting_task(q)
    q.put("rec")
    assert q.take() is None
    with pytest.raises(Empty):
        q.get(False)
    assert await task == "rec"


async def test_async_timeout_leaves_no_ghost() -> None:
    q = full_async_queue(1)
    impatient = await waiting_task(q, timeout=0.01)
    patient = await waiting_task(q)
    with pytest.raises(Empty):
        await impatient
    assert q.waiting == 1
    q.put("rec")
    assert await patient == "rec"


async def test_async_cancelled_waiter_leaves_no_ghost() -> None:
    q = full_async_queue(1)
    cancelled = await waiting_task(q)
    patient = await waiting_task(q)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert q.waiting == 1
    q.put("rec")
    assert await patient == "rec"


async def test_async_record_handed_to_a_task_cancelled_in_the_same_step_is_passed_on() -> None:
    q = full_async_queue(1)
    cancelled = await waiting_task(q)
    patient = await waiting_task(q)
    q.put("rec")  # handed to the first...
    cancelled.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await patient == "rec"


async def test_async_freed_capacity_wakes_the_oldest_waiter() -> None:
    q = full_async_queue(1)
    task = await waiting_task(q)
    q.release_slot()
    assert await task is CREATE


async def test_async_queue_binds_to_no_loop() -> None:
    """Made outside any loop (an engine at import time), used on this one."""
    q = await asyncio.to_thread(full_async_queue, 1)
    task = await waiting_task(q)
    q.put("rec")
    assert await task == "rec"
