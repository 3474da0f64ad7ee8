"""The socket backstop, on a real socketpair (no server needed)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from poolguard.integrations.backstop import (
    COMPACT_AT,
    Ticket,
    Watchdog,
    backstop,
    shutdown_socket,
    watchdog,
)


def test_fires_and_unblocks_a_blocked_read() -> None:
    a, b = socket.socketpair()
    with a, b:
        started = time.monotonic()
        with backstop(a, 0.2) as ticket:
            data = a.recv(10)  # blocks until the watchdog shuts the socket down
        assert data == b""
        assert ticket is not None
        assert ticket.fired
        assert 0.15 <= time.monotonic() - started < 2.0
        assert a.fileno() >= 0  # the fd itself stays open: only the socket was shut down


def test_cancel_before_deadline_never_fires() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    with a, b:
        ticket = dog.arm(a, 0.05)
        assert ticket.cancel() is True
        time.sleep(0.15)
        assert not ticket.fired
        b.sendall(b"x")
        assert a.recv(1) == b"x"


def test_cancel_after_fire_reports_it() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    with a, b:
        ticket = dog.arm(a, 0.0)
        deadline = time.monotonic() + 2
        while not ticket.fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ticket.cancel() is False


def test_none_means_no_backstop() -> None:
    with backstop(0, None) as ticket:
        assert ticket is None


def test_many_cancelled_tickets_are_compacted() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    with a, b:
        for _ in range(10_000):
            dog.arm(a, 60.0).cancel()
        assert len(dog._heap) < 9_000
        assert dog.pending() == 0


def test_shutdown_of_a_bad_fd_is_harmless() -> None:
    assert shutdown_socket(-1) is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_does_not_inherit_pending_tickets() -> None:
    a, b = socket.socketpair()
    with a, b:
        dog = watchdog()
        ticket = dog.arm(a, 0.5)
        pid = os.fork()
        if pid == 0:  # child: a fresh watchdog, the parent's ticket is not there
            os._exit(0 if watchdog() is not dog and watchdog().pending() == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ticket.cancel() is True


class _CountingLock:
    """A lock that counts acquisitions (to show which paths take the watchdog's lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.acquired += 1
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_arm_and_cancel_take_no_lock_while_the_thread_sleeps_past_them() -> None:
    # Under many threads a lock per arm()/cancel() made callers queue behind each other; the
    # common case (the thread already sleeps until an earlier deadline) must take none.
    dog = Watchdog()
    # The counting locks go in before the thread starts: swapping ``_cond`` under a live thread
    # left it waiting on the old condition (deaf to the new one's notify), then dying with
    # "cannot wait on un-acquired lock" when it woke.
    lock = _CountingLock()
    dog._cond = threading.Condition(lock)  # type: ignore[arg-type]
    firing = _CountingLock()
    dog._firing = firing  # type: ignore[assignment]
    a, b = socket.socketpair()
    with a, b:
        first = dog.arm(a, 30.0)  # starts the thread; it then sleeps until this deadline
        _wait_until(lambda: dog._wake_at == first.at)
        with lock:  # the thread is parked in wait(): it holds nothing
            lock.acquired = firing.acquired = 0
        for _ in range(100):
            assert dog.arm(a, 60.0).cancel() is True
        assert lock.acquired == 0
        assert firing.acquired == 0
        assert first.cancel() is True
        # The thread still serves: an earlier deadline wakes it and fires.
        early = dog.arm(a, 0.0)
        _wait_until(lambda: early.fired)
        assert dog._thread is not None
        assert dog._thread.is_alive()


def test_an_earlier_deadline_wakes_the_sleeping_thread() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    with a, b:
        late = dog.arm(a, 30.0)
        _wait_until(lambda: dog._wake_at == late.at)
        early = dog.arm(a, 0.05)
        _wait_until(lambda: early.fired)
        assert early.cancel() is False
        assert late.cancel() is True  # not due yet: it never fires
        assert not late.fired


def test_concurrent_arms_fire_exactly_the_uncancelled_tickets() -> None:
    dog = Watchdog()
    pairs = [socket.socketpair() for _ in range(8)]
    kept: list[Ticket] = []
    cancelled: list[tuple[Ticket, bool]] = []

    def worker(i: int) -> None:
        sock = pairs[i][0]
        for n in range(300):
            ticket = dog.arm(sock, 0.02 if n % 100 == 0 else 30.0)
            if n % 100 == 0:
                kept.append(ticket)
            else:
                cancelled.append((ticket, ticket.cancel()))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        _wait_until(lambda: all(t.fired for t in kept))
        assert all(ok and not t.fired for t, ok in cancelled)
        assert dog.pending() == 0
    finally:
        for x, y in pairs:
            x.close()
            y.close()


def test_the_inbox_of_cancelled_tickets_stays_bounded() -> None:
    dog = Watchdog()
    a, b = socket.socketpair()
    with a, b:
        keep = dog.arm(a, 60.0)
        for _ in range(20_000):
            dog.arm(a, 60.0).cancel()
        _wait_until(lambda: len(dog._inbox) < COMPACT_AT)
        assert len(dog._heap) < COMPACT_AT
        assert dog.pending() == 1
        assert keep.cancel() is True


def _wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    stop = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < stop, "condition not reached"
        time.sleep(0.005)
