"""The socket backstop, on a real socketpair (no server needed)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from poolguard.integrations.backstop import Watchdog, backstop, shutdown_socket, watchdog


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
