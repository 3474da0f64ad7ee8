"""The client-side backstop: cut a connection's socket when its deadline passes.

Why: psycopg sync has no read timeout at all, and psycopg async, when its task is cancelled,
sends a server-side cancel and waits for it — about 11 s against a frozen server (measured, see
DESIGN "Known traps"). Server-side ``statement_timeout`` cannot help when the server is frozen
(SIGSTOP), the network blackholes packets, or the socket is half-open. What always works, sync
and async alike, is to ``shutdown(SHUT_RDWR)`` the connection's socket: the blocked read returns
at once, the driver raises its own error (psycopg: ``OperationalError``, ``conn.broken`` true),
and the caller turns that into a timeout and discards the connection.

One design for both worlds: a single daemon thread (:class:`Watchdog`) holds a heap of
deadlines; the event loop needs no cooperation, because a socket shut down from another thread
wakes the loop's selector like any EOF. We shut down a ``dup()`` of the file descriptor, never
close it: the driver still owns the fd, closing it from another thread could hand the number to
an unrelated file.

Cost per call: ``arm()`` appends to an inbox (a deque) and ``cancel()`` pops a one-item claim
list, both single C calls, so neither takes a lock on the common path. A lock per arm (heap push
under the watchdog's lock, plus a lock per ticket for cancel) was measured as the backstop's
cost under 32 threads (py-spy, GIL samples of the native pool with a query timeout: arm +
cancel ~8% of the process's Python time, lock hand-offs between threads holding the GIL). Only
the watchdog thread touches the heap; it drains the inbox whenever it wakes, and ``arm()``
wakes it (under the lock) only when the new deadline is earlier than the one it sleeps until,
or the inbox has grown long (then the thread drops what was already cancelled).

Races: firing and cancelling both try to take the ticket's claim (``list.pop`` is atomic), so
exactly one wins. The watchdog holds its firing lock from taking the claim until the socket is
shut down; a ``cancel()`` that lost the claim waits on that lock, so once ``cancel()`` returns
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
from collections import deque
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

    __slots__ = ("_claim", "_fired", "_firing", "at", "fd", "on_fire", "seconds")

    def __init__(
        self,
        fd: int,
        at: float,
        seconds: float,
        on_fire: Callable[[], None] | None,
        firing: threading.Lock | None = None,
    ) -> None:
        self.fd = fd
        self.at = at
        self.seconds = seconds
        self.on_fire = on_fire
        # Taken (popped) exactly once: by cancel() or by the watchdog firing, whichever is first.
        self._claim = [True]
        self._fired = False
        self._firing = firing if firing is not None else threading.Lock()

    @property
    def fired(self) -> bool:
        return self._fired

    @property
    def armed(self) -> bool:
        """Neither cancelled nor fired."""
        return bool(self._claim)

    def cancel(self) -> bool:
        """Disarm. Returns False when the ticket already fired (the socket was cut)."""
        try:
            self._claim.pop()
        except IndexError:
            # Cancelled before, or the watchdog took the claim: wait until its shutdown is done,
            # so the caller never reuses (or closes) a socket that is still being cut.
            with self._firing:
                return not self._fired
        return True

    def fire(self) -> None:
        with self._firing:
            try:
                self._claim.pop()
            except IndexError:
                return  # cancelled
            self._fired = True  # before the cut: a read it unblocks must see it
            shutdown_socket(self.fd)
        log.info("backstop fired after %.3fs: socket shut down", self.seconds)
        if self.on_fire is not None:
            try:
                self.on_fire()
            except Exception:
                log.exception("backstop on_fire callback raised; ignored")


Entry = tuple[float, int, Ticket]

#: Bumped in a forked child: a watchdog started before the fork has no thread there.
_fork_epoch = 0


class Watchdog:
    """A single daemon thread firing :class:`Ticket` s at their deadlines."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[Entry] = []
        """The watchdog thread's own (touched only under ``_cond``)."""
        self._inbox: deque[Entry] = deque()
        """Tickets armed since the thread last looked (appended without a lock)."""
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._firing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._epoch = -1
        self._compact_at = COMPACT_AT
        self._wake_at = float("inf")
        """When the watchdog thread will next wake by itself: earlier tickets must notify it."""

    def arm(
        self, conn: HasFileno | int, seconds: float, on_fire: Callable[[], None] | None = None
    ) -> Ticket:
        """Cut ``conn``'s socket in ``seconds`` unless the ticket is cancelled first."""
        fd = conn if isinstance(conn, int) else conn.fileno()
        at = self._clock() + max(0.0, seconds)
        ticket = Ticket(fd, at, seconds, on_fire, self._firing)
        inbox = self._inbox
        inbox.append((at, next(self._seq), ticket))
        # Read after the append: if the thread set ``_wake_at`` after its last look at the
        # inbox, this read sees it; if it looks again later, it finds the ticket there.
        if (
            at < self._wake_at
            or len(inbox) >= self._compact_at
            or self._thread is None
            or self._epoch != _fork_epoch
        ):
            self._wake(at)
        return ticket

    def _wake(self, at: float) -> None:
        # Waking the thread costs a context switch: only when it would sleep past ``at`` (or
        # has a long inbox to sort out, or is not running).
        with self._cond:
            self._ensure_thread()
            if at < self._wake_at or len(self._inbox) >= self._compact_at:
                self._wake_at = min(at, self._wake_at)
                self._cond.notify()

    def _drain(self) -> None:
        """Move the inbox into the heap, dropping what was cancelled already (under _cond)."""
        inbox, heap = self._inbox, self._heap
        while inbox:
            entry = inbox.popleft()
            if entry[2]._claim:
                heapq.heappush(heap, entry)
        if len(heap) >= self._compact_at:
            self._compact()

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2]._claim]
        heapq.heapify(self._heap)
        self._compact_at = max(COMPACT_AT, 2 * len(self._heap))

    def pending(self) -> int:
        """Armed tickets (for tests and stats)."""
        with self._cond:
            entries = [*self._heap, *list(self._inbox)]  # list(deque): one atomic copy
        return sum(1 for entry in entries if entry[2]._claim)

    def _ensure_thread(self) -> None:
        # After fork() the thread is gone from the child: start a fresh one there. A thread
        # that died (it never should) clears ``_thread`` on its way out.
        if self._thread is None or self._epoch != _fork_epoch or not self._thread.is_alive():
            self._epoch = _fork_epoch
            self._thread = threading.Thread(
                target=self._run, name="poolguard-backstop", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                due = self._next_due()
                for ticket in due:
                    ticket.fire()
        finally:
            if self._thread is threading.current_thread():
                self._thread = None  # the next arm() starts another

    def _next_due(self) -> list[Ticket]:
        with self._cond:
            while True:
                self._drain()
                now = self._clock()
                heap = self._heap
                due: list[Ticket] = []
                while heap and (heap[0][0] <= now or not heap[0][2]._claim):
                    ticket = heapq.heappop(heap)[2]
                    if ticket._claim:
                        due.append(ticket)
                if due:
                    self._wake_at = now
                    return due
                # Sleep until the earliest entry, cancelled or not: popping cancelled entries
                # lazily keeps cancel() lock-free (it only takes the ticket's claim).
                self._wake_at = heap[0][0] if heap else float("inf")
                if self._inbox:
                    continue  # armed while we looked: their arm() may have read the old value
                self._cond.wait(None if not heap else self._wake_at - now)


_watchdog: Watchdog | None = None
_watchdog_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must never fire its parent's tickets: the fds are shared, and shutdown()
    # would cut the parent's sockets. The parent's lock may also be held mid-fork. Start over.
    global _watchdog, _watchdog_lock, _fork_epoch
    _fork_epoch += 1
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
