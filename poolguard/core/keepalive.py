"""Background keepalive of idle connections: ONE daemon thread per process, for every pool.

A pool whose settings turn keepalive on (``POOLGUARD_KEEPALIVE=30s``) is *watched* here, by weak
reference (a forgotten engine is not kept alive by its keepalive). The thread sleeps until the
earliest pool is due, then asks that pool to sweep: the pool pings the connections idle longer
than its interval, evicts and replaces the dead ones, and answers when its next connection
becomes due. How a pool sweeps (which lock, how it lends the connection's slot so that no
waiting caller waits for a ping) is the pool's business: see the ``_keepalive.py`` modules of
``integrations/sqlalchemy``, ``integrations/psycopg_pool`` and ``integrations/redis``.

Asyncio pools: their connections belong to one event loop, and a thread must not touch them.
For such a pool the thread does not sweep; it schedules the pool's ``akeepalive_sweep()`` on
that loop with ``call_soon_threadsafe`` (one task at a time per pool) and the task reports the
next due time back. So there is still one thread per process and no task lingers on a loop
between sweeps; a closed loop drops the pool from the watch.

``poolguard.reconfigure(pool, keepalive=...)`` calls :func:`retune`: a pool that has opened
connections is watched at once under the new interval (or dropped at once when it is off).

The thread exits when nothing is watched any more (``dispose()`` / ``close()`` /
``disconnect()`` unwatch their pool; a collected pool falls out at its next due time) and at
interpreter exit; after ``fork()`` the child starts with an empty watch (the parent's
connections are not the child's to ping).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Sweepable", "is_watched", "retune", "running", "unwatch", "watch", "watched"]

log = logging.getLogger("poolguard.keepalive")

#: The longest the thread sleeps without re-reading the watch (a changed interval is seen by then).
MAX_SLEEP = 60.0
#: A sweep that raised is retried after this long, not in a tight loop.
RETRY_AFTER = 1.0


class Sweepable(Protocol):
    """What a watched pool provides."""

    def keepalive_interval(self) -> float | None:
        """The current interval (read live: a reconfigured pool changes it); None = stop."""

    def keepalive_sweep(self, now: float) -> float | None:
        """Sync pools: ping what is due; return the monotonic time the next connection is due
        (None: nothing idle)."""

    # Optional: ``keepalive_stats() -> PoolStats | None``, the pool's stats, for its log fields.


@dataclass
class _Entry:
    ref: weakref.ref[Any]
    loop: asyncio.AbstractEventLoop | None
    due: float
    busy: bool = False  # an asyncio sweep is scheduled or running
    handle: Any = field(default=None, repr=False)


class _Keeper:
    """The watch and its one thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.entries: dict[int, _Entry] = {}
        self.thread: threading.Thread | None = None
        self.stopping = False

    # -- the pools' interface ---------------------------------------------------------------
    def watch(self, pool: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        key = id(pool)
        interval: float | None = pool.keepalive_interval()
        with self.cond:
            entry = self.entries.get(key)
            if entry is not None and entry.ref() is pool:
                entry.loop = loop or entry.loop
                # A shorter interval (poolguard.reconfigure) is due by then, not at the old time.
                if interval is not None and time.monotonic() + interval < entry.due:
                    entry.due = time.monotonic() + interval
                    self.cond.notify_all()
                return
            # No callback on the weak reference: it could run (garbage collection) in this very
            # thread while it holds the lock; a collected pool is dropped at its next due time.
            ref = weakref.ref(pool)
            # Interval off: due at once, so the thread drops it (and ends if it was the last).
            self.entries[key] = _Entry(ref, loop, time.monotonic() + (interval or 0.0))
            self.stopping = False
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="poolguard-keepalive", daemon=True
                )
                self.thread.start()
            self.cond.notify_all()

    def unwatch(self, pool: Any) -> None:
        with self.cond:
            entry = self.entries.get(id(pool))
            if entry is not None and entry.ref() is pool:
                del self.entries[id(pool)]
                self.cond.notify_all()

    def stop(self, timeout: float = 2.0) -> None:
        with self.cond:
            self.stopping = True
            self.entries.clear()
            self.cond.notify_all()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                if self.stopping or not self.entries:
                    if self.thread is threading.current_thread():
                        self.thread = None
                    return
                due = self._next_due()
                if due is None:
                    self.cond.wait(MAX_SLEEP)  # only asyncio sweeps in flight: they notify
                    continue
                key, at = due
                wait = at - time.monotonic()
                if wait > 0:
                    self.cond.wait(min(wait, MAX_SLEEP))
                    continue  # re-read: pools may have come, gone or changed meanwhile
                entry = self.entries[key]
            self._sweep(key, entry)

    def _next_due(self) -> tuple[int, float] | None:
        ready = [(e.due, k) for k, e in self.entries.items() if not e.busy]
        if not ready:
            return None
        at, key = min(ready)
        return key, at

    def _sweep(self, key: int, entry: _Entry) -> None:
        pool = entry.ref()
        interval = None if pool is None else pool.keepalive_interval()
        if pool is None or interval is None:
            self._drop(key, entry)
            return
        now = time.monotonic()
        if entry.loop is not None:
            self._schedule(key, entry, pool, interval)
            return
        try:
            nxt = pool.keepalive_sweep(now)
        except Exception as exc:  # a bug must not end keepalive for every other pool
            _sweep_failed(pool, exc)
            nxt = now + RETRY_AFTER
        self._reschedule(key, entry, nxt, interval)

    def _schedule(self, key: int, entry: _Entry, pool: Any, interval: float) -> None:
        loop = entry.loop
        assert loop is not None
        entry.busy = True

        def start() -> None:
            # On the pool's loop: the sweep is a task there, the thread only hears back.
            entry.handle = loop.create_task(_async_sweep(self, key, entry, pool, interval))

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed: its connections died with it
            self._drop(key, entry)

    def _reschedule(self, key: int, entry: _Entry, nxt: float | None, interval: float) -> None:
        now = time.monotonic()
        # At least a tenth of the interval between sweeps: a connection that cannot be pinged
        # (borrowed by a caller right now) is not re-examined in a tight loop.
        at = now + interval if nxt is None else max(min(nxt, now + interval), now + interval / 10)
        with self.cond:
            entry.due = at
            entry.busy = False
            entry.handle = None
            self.cond.notify_all()

    def _drop(self, key: int, entry: _Entry) -> None:
        with self.cond:
            if self.entries.get(key) is entry:
                del self.entries[key]
            self.cond.notify_all()

    def after_fork(self) -> None:
        # The child's copy of the parent's pools share the parent's sockets: never ping them.
        self.cond = threading.Condition(threading.Lock())
        self.entries = {}
        self.thread = None
        self.stopping = False


async def _async_sweep(
    keeper: _Keeper, key: int, entry: _Entry, pool: Any, interval: float
) -> None:
    now = time.monotonic()
    try:
        nxt = await pool.akeepalive_sweep(now)
    except asyncio.CancelledError:
        keeper._drop(key, entry)  # the loop is shutting down
        raise
    except Exception as exc:
        _sweep_failed(pool, exc)
        nxt = now + RETRY_AFTER
    del pool  # only the weak reference between sweeps
    keeper._reschedule(key, entry, nxt, interval)


def _sweep_failed(pool: Any, exc: Exception) -> None:
    """Log a sweep that raised, with the pool's common log fields when it has them."""
    from poolguard.core.stats import PoolStats
    from poolguard.logs import pool_fields

    stats_of = getattr(pool, "keepalive_stats", None)
    stats = stats_of() if callable(stats_of) else None
    more = {"error_type": type(exc).__name__}
    if not isinstance(stats, PoolStats):
        log.exception(
            "keepalive sweep of %r failed", pool, extra={"event": "keepalive_error", **more}
        )
        return
    extra = pool_fields(stats, "keepalive_error", **more)
    log.exception("%s: keepalive sweep failed", stats.name, extra=extra)


_keeper = _Keeper()
atexit.register(_keeper.stop)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keeper.after_fork)


def watch(pool: Sweepable, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Keep ``pool``'s idle connections alive (idempotent); ``loop``: an asyncio pool's loop."""
    _keeper.watch(pool, loop)


def unwatch(pool: object) -> None:
    """Stop keeping ``pool`` alive (its ``dispose()`` / ``close()``); idempotent."""
    _keeper.unwatch(pool)


def retune(pool: Sweepable, loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """``poolguard.reconfigure`` changed ``pool``'s interval: watch it now under the new one (its
    idle connections are due from now + interval, not from the next connect), or stop watching
    it at once when keepalive was turned off. Returns whether it is watched."""
    if pool.keepalive_interval() is None:
        _keeper.unwatch(pool)
        return False
    _keeper.watch(pool, loop)
    return True


def is_watched(pool: object) -> bool:
    """Is ``pool`` watched (tests, diagnostics)?"""
    with _keeper.cond:
        entry = _keeper.entries.get(id(pool))
        return entry is not None and entry.ref() is pool


def watched() -> int:
    """How many pools are watched (tests, diagnostics)."""
    with _keeper.cond:
        return sum(1 for e in _keeper.entries.values() if e.ref() is not None)


def running() -> list[threading.Thread]:
    """The keepalive threads alive in this process: at most one (tests, diagnostics)."""
    return [t for t in threading.enumerate() if t.name == "poolguard-keepalive" and t.is_alive()]
