"""Keepalive sweeps of the native psycopg pools (``POOLGUARD_KEEPALIVE``).

psycopg_pool's own ``check()`` pings *every* idle connection at once (all leave the pool
together, so a caller arriving meanwhile waits when the pool is at ``max_size``) and pings
connections used a moment ago. The sweep here does what ``check()`` does, one connection at a
time and only for those idle longer than the interval, with psycopg_pool's own machinery:

- the connection leaves the idle deque under the pool's lock and its slot is lent
  (``_nconns - 1``): a caller finding the deque empty meanwhile makes psycopg_pool grow the
  pool instead of waiting for the ping;
- ``check_connection`` under poolguard's backstop (at most ``VALIDATE_TIMEOUT``);
- alive: the slot is taken back and ``_add_to_pool`` hands it to the oldest waiter or the
  deque; if the pool grew into the slot meanwhile, the connection is closed;
- dead: evicted (reason ``keepalive``), closed, and, if the pool is now below ``min_size``, an
  ``AddConnection`` task refills it (psycopg_pool's reconnect, with poolguard's backoff).

The sync pool's sweep runs in the process-wide keepalive thread; the asyncio pool's as a task on
the pool's loop (see :mod:`poolguard.core.keepalive`). The decisions (:func:`due`,
:func:`next_due`) are shared; only the lock and the awaits differ.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from psycopg_pool.pool import AddConnection as SyncAddConnection
from psycopg_pool.pool_async import AddConnection as AsyncAddConnection

from poolguard.core import keepalive
from poolguard.core.stats import PoolStats
from poolguard.integrations.psycopg_pool._rules import VALIDATE_TIMEOUT, PoolRules, discard
from poolguard.integrations.psycopg_pool.connection import (
    GuardedAsyncConnection,
    GuardedConnection,
    armed,
)

__all__ = ["AsyncKeepaliveMixin", "KeepaliveMixin", "due", "next_due"]


def _last(conn: Any) -> float:
    used: float = conn._pg_returned if conn._pg_returned is not None else conn._pg_created
    pinged: float = getattr(conn, "_pg_pinged", 0.0)
    return max(used, pinged)


def due(rules: Any, conn: Any, now: float, interval: float) -> bool:
    """Ping this idle connection now? Not if used or pinged within the interval, nor when the
    next checkout retires it anyway (lifetime, ``max_idle``)."""
    if now - _last(conn) < interval or conn._pg_expires <= now:
        return False
    max_idle = rules.settings.max_idle
    returned = conn._pg_returned
    return not (max_idle and returned is not None and now - returned >= max_idle)


def next_due(idle: Any, interval: float) -> float | None:
    return min((_last(conn) + interval for conn in list(idle)), default=None)


def _lend(pool: Any, now: float, interval: float) -> Any:
    """(Under the pool's lock.) The first due idle connection, its slot lent; else None."""
    if pool._closed:
        return None
    for conn in pool._pool:
        if due(pool._pg, conn, now, interval):
            pool._pool.remove(conn)
            pool._nconns -= 1
            return conn
    return None


def _retake(pool: Any) -> bool:
    """(Under the lock.) Take the lent slot back; False if the pool grew into it or closed."""
    if pool._closed or pool._nconns >= pool._max_size:
        return False
    pool._nconns += 1
    return True


def _refill(pool: Any) -> bool:
    """(Under the lock.) After an eviction: claim a slot for a replacement if below min_size."""
    if pool._closed or pool._nconns >= pool._min_size:
        return False
    pool._nconns += 1
    return True


def _closer(pool: Any) -> Any:
    """psycopg_pool's ``_close_connection`` (absent from psycopg_pool 3.2.1, which closes
    inline: ``conn._pool = None; conn.close()``), or None: then the caller does the same.

    Feature-detected, not version-compared. Calling the missing method raised AttributeError
    in the middle of a keepalive eviction, before the slot given up in :func:`_lend` was
    refilled: the pool stayed below ``min_size`` for good (version-matrix floor cell).
    """
    return getattr(pool, "_close_connection", None)


def _failed(pool: Any, conn: Any, exc: BaseException) -> None:
    stats = pool._pg.guard.stats
    now = time.monotonic()
    stats.incr("keepalive_failures")
    returned = conn._pg_returned
    stats.evict("keepalive", now - conn._pg_created, 0.0 if returned is None else now - returned)
    discard(conn)
    pool._pg.observe(exc)


class AsyncKeepaliveMixin:
    """For ``GuardedAsyncConnectionPool`` (before psycopg_pool's class in its bases)."""

    _pg: PoolRules
    _pool: Any
    _lock: Any
    _pg_ka_watched = False
    _pg_ka_loop: asyncio.AbstractEventLoop | None = None
    """The loop of the pool's connections, known from its first connect."""

    async def _connect(self, timeout: float | None = None) -> GuardedAsyncConnection:
        conn: GuardedAsyncConnection = await super()._connect(timeout)  # type: ignore[misc]
        if self._pg_ka_loop is None:
            self._pg_ka_loop = asyncio.get_running_loop()  # for keepalive_reconfigured()
        if not self._pg_ka_watched and self.keepalive_interval() is not None:
            self._pg_ka_watched = True
            keepalive.watch(self, self._pg_ka_loop)  # type: ignore[arg-type]
        return conn

    def keepalive_reconfigured(self) -> None:
        """``poolguard.reconfigure`` changed ``keepalive``: watched (or not) at once."""
        if self._pg_ka_loop is not None and not self._closed:  # type: ignore[attr-defined]
            self._pg_ka_watched = keepalive.retune(self, self._pg_ka_loop)  # type: ignore[arg-type]

    async def close(self, timeout: float = 5.0) -> None:
        keepalive.unwatch(self)
        self._pg_ka_watched = False
        await super().close(timeout)  # type: ignore[misc]

    def keepalive_interval(self) -> float | None:
        interval: float | None = self._pg.settings.keepalive
        return interval

    def keepalive_stats(self) -> PoolStats:
        return self._pg.guard.stats

    async def akeepalive_sweep(self, now: float) -> float | None:
        interval = self.keepalive_interval()
        if interval is None:
            return None
        for _ in range(len(self._pool)):  # each connection at most once per sweep
            async with self._lock:
                conn = _lend(self, time.monotonic(), interval)
            if conn is None:
                break
            await self._ka_keep(conn)
        return next_due(self._pool, interval)

    async def _ka_keep(self, conn: Any) -> None:
        self._pg.guard.stats.incr("keepalive_pings")
        try:
            with armed(conn, VALIDATE_TIMEOUT):
                await self.check_connection(conn)  # type: ignore[attr-defined]
        except Exception as exc:
            _failed(self, conn, exc)
            try:
                await self._ka_close(conn)
            finally:
                # The slot lent in _lend is refilled whatever the close did.
                async with self._lock:
                    refill = _refill(self)
                if refill:
                    self.run_task(AsyncAddConnection(self))  # type: ignore[attr-defined, arg-type]
            return
        conn._pg_pinged = time.monotonic()
        async with self._lock:
            keep = _retake(self)
        if keep:
            await self._add_to_pool(conn)  # type: ignore[attr-defined]
        else:
            await self._ka_close(conn)

    async def _ka_close(self, conn: Any) -> None:
        close = _closer(self)
        if close is not None:
            await close(conn)
            return
        conn._pool = None  # psycopg_pool 3.2.1's inline close: not handed back to the pool
        await conn.close()


class KeepaliveMixin:
    """For ``GuardedConnectionPool``: the same sweep, run in the keepalive thread."""

    _pg: PoolRules
    _pool: Any
    _lock: Any
    _pg_ka_watched = False
    _pg_ka_opened = False

    def _connect(self, timeout: float | None = None) -> GuardedConnection:
        conn: GuardedConnection = super()._connect(timeout)  # type: ignore[misc]
        self._pg_ka_opened = True
        if not self._pg_ka_watched and self.keepalive_interval() is not None:
            self._pg_ka_watched = True
            keepalive.watch(self)
        return conn

    def keepalive_reconfigured(self) -> None:
        """``poolguard.reconfigure`` changed ``keepalive``: watched (or not) at once."""
        if self._pg_ka_opened and not self._closed:  # type: ignore[attr-defined]
            self._pg_ka_watched = keepalive.retune(self)

    def close(self, timeout: float = 5.0) -> None:
        keepalive.unwatch(self)
        self._pg_ka_watched = False
        super().close(timeout)  # type: ignore[misc]

    def keepalive_interval(self) -> float | None:
        interval: float | None = self._pg.settings.keepalive
        return interval

    def keepalive_stats(self) -> PoolStats:
        return self._pg.guard.stats

    def keepalive_sweep(self, now: float) -> float | None:
        interval = self.keepalive_interval()
        if interval is None:
            return None
        for _ in range(len(self._pool)):
            with self._lock:
                conn = _lend(self, time.monotonic(), interval)
            if conn is None:
                break
            self._ka_keep(conn)
        return next_due(self._pool, interval)

    def _ka_keep(self, conn: Any) -> None:
        self._pg.guard.stats.incr("keepalive_pings")
        try:
            with armed(conn, VALIDATE_TIMEOUT):
                self.check_connection(conn)  # type: ignore[attr-defined]
        except Exception as exc:
            _failed(self, conn, exc)
            try:
                self._ka_close(conn)
            finally:
                # The slot lent in _lend is refilled whatever the close did.
                with self._lock:
                    refill = _refill(self)
                if refill:
                    self.run_task(SyncAddConnection(self))  # type: ignore[attr-defined, arg-type]
            return
        conn._pg_pinged = time.monotonic()
        with self._lock:
            keep = _retake(self)
        if keep:
            self._add_to_pool(conn)  # type: ignore[attr-defined]
        else:
            self._ka_close(conn)

    def _ka_close(self, conn: Any) -> None:
        close = _closer(self)
        if close is not None:
            close(conn)
            return
        conn._pool = None  # psycopg_pool 3.2.1's inline close: not handed back to the pool
        conn.close()
