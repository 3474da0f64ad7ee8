"""The client-side backstop: cut a connection's socket when its deadline passes.

Why: psycopg sync has no read timeout at all, and psycopg async, when its task is cancelled,
sends a server-side cancel and waits for it — about 11 s against a frozen server (measured, see
DESIGN "Known traps"). Server-side ``statement_timeout`` cannot help when the server is frozen
(SIGSTOP), the network blackholes packets, or the socket is half-open. What always works, sync
and async alike, is to ``shutdown(SHUT_RDWR)`` the connection's socket: the blocked read returns
at once, the driver raises its own error (psycopg: ``OperationalError``, ``conn.broken`` true),
and the caller turns that into a timeout and discards the connection.

One design for both worlds: a single daemon thread (:class:`Watchdog`) holds a heap of
deadlines. ``arm()`` is a heap push under a lock (no thread per call); the event loop needs no
cooperation, because a socket shut down from another thread wakes the loop's selector like any
EOF. We shut down a ``dup()`` of the file descriptor, never close it: the driver still owns the
fd, closing it from another thread could hand the number to an unrelated file.

Races: :meth:`Ticket.cancel` and the firing take the same lock, so once ``cancel()`` returns
the socket will never be cut later — a connection returned to the pool is safe. If the call
finished *just* before the deadline but the ticket fired before ``cancel()``, ``cancel()``
returns False: the caller must discard the connection even though its call succeeded.

Nothing here knows about SQLAlchemy or psycopg beyond "an object with ``fileno()``". Callers
use :func:`backstop` (a context manager around one call) or :func:`watchdog`: the SQLAlchemy
integration's ``pool.py`` and ``connection.py``, the native pools' ``connection.py`` and
``_rules.py``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["HasFileno", "Ticket", "Watchdog", "backstop", "shutdown_socket", "watchdog"]

log = logging.getLogger("poolguard.backstop")

#: Cancelled tickets stay in the heap until they surface; above this size, ``arm()`` drops them
#: (amortized O(1): the heap is rebuilt only when it has doubled since the last rebuild).
COMPACT_AT = 4096


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def shutdown_socket(fd: int) -> bool:
    """Shut down (both directions) the socket behind ``fd`` without closing ``fd``."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:  # already disconnected: the blocked call is failing anyway
        return False
    finally:
        sock.close()  # closes the dup only


class Ticket:
    """One armed deadline for one connection."""

    __slots__ = ("_lock", "_state", "at", "fd", "on_fire", "seconds")

    _ARMED, _FIRED, _CANCELLED = 0, 1, 2

    def __init__(
        self, fd: int, at: float, seconds: float, on_fire: Callable[[], None] | None
    ) -> None:
        self.fd = fd
        self.at = at
        self.seconds = seconds
        self.on_fire = on_fire
        self._lock = threading.Lock()
        self._state = Ticket._ARMED

    @property
    def fired(self) -> bool:
        return self._state == Ticket._FIRED

    def cancel(self) -> bool:
        """Disarm. Returns False when the ticket already fired (the socket was cut)."""
        with self._lock:
            if self._state == Ticket._ARMED:
                self._state = Ticket._CANCELLED
            return self._state != Ticket._FIRED

    def fire(self) -> None:
        with self._lock:
            if self._state != Ticket._ARMED:
                return
            self._state = Ticket._FIRED
            shutdown_socket(self.fd)
        log.info("backstop fired after %.3fs: socket shut down", self.seconds)
        if self.on_fire is not None:
            try:
                self.on_fire()
            except Exception:
                log.exception("backstop on_fire callback raised; ignored")


class Watchdog:
    """A single daemon thread firing :class:`Ticket` s at their deadlines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Ticket]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._compact_at = COMPACT_AT
        self._wake_at = float("inf")
        """When the watchdog thread will next wake by itself: earlier tickets must notify it."""

    def arm(
        self, conn: HasFileno | int, seconds: float, on_fire: Callable[[], None] | None = None
    ) -> Ticket:
        """Cut ``conn``'s socket in ``seconds`` unless the ticket is cancelled first."""
        fd = conn if isinstance(conn, int) else conn.fileno()
        at = self._clock() + max(0.0, seconds)
        ticket = Ticket(fd, at, seconds, on_fire)
        with self._cond:
            self._ensure_thread()
            if len(self._heap) >= self._compact_at:
                self._compact()
            heapq.heappush(self._heap, (at, next(self._seq), ticket))
            # Waking the thread costs a context switch: only when it would sleep past ``at``.
            if at < self._wake_at:
                self._wake_at = at
                self._cond.notify()
        return ticket

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2]._state == Ticket._ARMED]
        heapq.heapify(self._heap)
        self._compact_at = max(COMPACT_AT, 2 * len(self._heap))

    def pending(self) -> int:
        """Armed tickets (for tests and stats)."""
        with self._cond:
            return sum(1 for entry in self._heap if entry[2]._state == Ticket._ARMED)

    def _ensure_thread(self) -> None:
        # After fork() the thread is gone from the child: start a fresh one there.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="poolguard-backstop", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            due = self._next_due()
            for ticket in due:
                ticket.fire()

    def _next_due(self) -> list[Ticket]:
        with self._cond:
            while True:
                now = self._clock()
                due: list[Ticket] = []
                while self._heap and (
                    self._heap[0][0] <= now or self._heap[0][2]._state != Ticket._ARMED
                ):
                    ticket = heapq.heappop(self._heap)[2]
                    if ticket._state == Ticket._ARMED:
                        due.append(ticket)
                if due:
                    self._wake_at = now
                    return due
                # Sleep until the earliest entry, cancelled or not: popping cancelled entries
                # lazily keeps cancel() lock-free for the watchdog (a flag under the ticket lock).
                self._wake_at = self._heap[0][0] if self._heap else float("inf")
                self._cond.wait(None if not self._heap else self._wake_at - now)


_watchdog: Watchdog | None = None
_watchdog_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must never fire its parent's tickets: the fds are shared, and shutdown()
    # would cut the parent's sockets. The parent's lock may also be held mid-fork. Start over.
    global _watchdog, _watchdog_lock
    _watchdog = None
    _watchdog_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def watchdog() -> Watchdog:
    """The process-wide watchdog (its thread starts on first use)."""
    global _watchdog
    if _watchdog is None:
        with _watchdog_lock:
            if _watchdog is None:
                _watchdog = Watchdog()
    return _watchdog


@contextmanager
def backstop(conn: HasFileno | int, seconds: float | None) -> Iterator[Ticket | None]:
    """Arm for the duration of the block; ``None`` seconds means no backstop (no cost).

    Inspect ``ticket.fired`` afterwards (or in ``except``) to tell a backstop cut from any other
    connection failure, and discard the connection when it fired.
    """
    if seconds is None:
        yield None
        return
    ticket = watchdog().arm(conn, seconds)
    try:
        yield ticket
    finally:
        ticket.cancel()
