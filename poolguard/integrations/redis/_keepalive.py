"""Keepalive sweeps of the guarded Redis pools (``POOLGUARD_KEEPALIVE``).

The sync pool (``GuardedBlockingConnectionPool``) is swept in the process-wide keepalive thread;
the asyncio pool's sweep is a task on the pool's event loop (see
:mod:`poolguard.core.keepalive`). One idle connection at a time is taken out of the pool's idle
set, PINGed with the validation timeout, and put back:

- sync: redis-py's ``LifoQueue`` of connections and ``None`` placeholders (a placeholder is a
  slot a caller fills by opening a connection). Under the queue's mutex the connection is
  replaced by a placeholder: a caller arriving meanwhile takes another connection or opens one,
  never waits for the ping. Back: it takes a placeholder's place again, or, when callers used
  every placeholder meanwhile, it is closed (the pool never exceeds ``max_connections``);
- asyncio: the connection leaves ``_available_connections`` (it is then in neither set, so its
  slot counts as free for ``can_get_connection``); back, it joins them again if there is room,
  under the pool's condition (waiters are notified), else it is closed.

A failed PING evicts the connection (reason ``keepalive``), and it is reconnected in place (one
attempt; a failure leaves it disconnected: redis-py reconnects it at its next use). redis-py pools
open connections on demand and have no minimum: "refill" keeps the idle ones there were.
Connections used or pinged within the interval are not pinged, nor those the next checkout
retires anyway (lifetime, ``max_idle``), nor disconnected ones.

Registration is at the pool's first ``make_connection``; ``disconnect()`` (what ``Redis.close()``
calls for a pool it owns) unregisters. The decisions (:func:`due`) are shared.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from poolguard.core import keepalive
from poolguard.core.stats import PoolStats
from poolguard.integrations.redis import _common as c

__all__ = ["AsyncKeepaliveMixin", "KeepaliveMixin", "due"]


def _last(conn: Any) -> float:
    pinged: float = getattr(conn, "guard_pinged", 0.0)
    used: float = conn.guard_last_used
    return max(used, pinged)


def _connected(conn: Any) -> bool:
    # redis-py 7.2's sync Connection has no ``is_connected`` (8.x's, and every asyncio one,
    # do); its socket tells the same.
    connected = getattr(conn, "is_connected", None)
    return conn._sock is not None if connected is None else bool(connected)


def due(pool: Any, conn: Any, now: float, interval: float) -> bool:
    if conn is None or not _connected(conn) or now - _last(conn) < interval:
        return False
    if now >= conn.guard_expires:
        return False
    max_idle = pool._guard_max_idle
    return not (max_idle is not None and now - conn.guard_last_used > max_idle)


def _next_due(conns: Any, interval: float) -> float | None:
    return min((_last(conn) + interval for conn in list(conns) if conn is not None), default=None)


def _failed(pool: Any, conn: Any) -> None:
    stats = pool.guard_policy.guard.stats
    now = time.monotonic()
    stats.incr("keepalive_failures")
    stats.evict("keepalive", now - conn.guard_born, now - conn.guard_last_used)


class AsyncKeepaliveMixin:
    """For ``AsyncGuardedBlockingConnectionPool`` (before redis-py's class in its bases)."""

    guard_policy: c.Policy
    _available_connections: Any
    _in_use_connections: Any
    _condition: Any
    max_connections: int
    _guard_ka_watched = False
    _guard_ka_loop: asyncio.AbstractEventLoop | None = None
    """The loop of the pool's connections, known from its first connection."""

    def make_connection(self) -> Any:
        conn = super().make_connection()  # type: ignore[misc]
        if self._guard_ka_loop is None:
            self._guard_ka_loop = asyncio.get_running_loop()  # for keepalive_reconfigured()
        if not self._guard_ka_watched and self.keepalive_interval() is not None:
            self._guard_ka_watched = True
            keepalive.watch(self, self._guard_ka_loop)
        return conn

    def keepalive_reconfigured(self) -> None:
        """``poolguard.reconfigure`` changed ``keepalive``: watched (or not) at once."""
        if self._guard_ka_loop is not None:
            self._guard_ka_watched = keepalive.retune(self, self._guard_ka_loop)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        keepalive.unwatch(self)
        self._guard_ka_watched = False
        self._guard_ka_loop = None  # a reused pool's next connections may be another loop's
        await super().disconnect(inuse_connections)  # type: ignore[misc]

    def keepalive_interval(self) -> float | None:
        return self.guard_policy.settings.keepalive

    def keepalive_stats(self) -> PoolStats:
        return self.guard_policy.guard.stats

    def keepalive_sweep(self, now: float) -> float | None:  # pragma: no cover - never sync
        raise TypeError("an asyncio pool is swept on its loop")

    async def akeepalive_sweep(self, now: float) -> float | None:
        interval = self.keepalive_interval()
        if interval is None:
            return None
        for _ in range(len(self._available_connections)):
            conn = self._ka_lend(time.monotonic(), interval)
            if conn is None:
                break
            await self._ka_keep(conn)
        return _next_due(self._available_connections, interval)

    def _ka_lend(self, now: float, interval: float) -> Any:
        # No await in here: on the loop, nothing else runs between the look and the removal.
        for conn in self._available_connections:
            if due(self, conn, now, interval):
                self._available_connections.remove(conn)
                return conn
        return None

    async def _ka_keep(self, conn: Any) -> None:
        self.guard_policy.guard.stats.incr("keepalive_pings")
        if await self._ka_ping(conn):
            conn.guard_pinged = time.monotonic()
        else:
            _failed(self, conn)
            await conn.disconnect()
            try:
                await conn.connect()
            except c.TRANSPORT_ERRORS:
                pass  # reconnected at its next use, under the command's retries and deadline
        async with self._condition:
            if len(self._available_connections) + len(self._in_use_connections) < (
                self.max_connections
            ):
                self._available_connections.append(conn)
                self._condition.notify()
                return
        await conn.disconnect()  # callers filled its slot meanwhile

    async def _ka_ping(self, conn: Any) -> bool:
        timeout = self.guard_policy.ping_timeout()
        configured = conn.socket_timeout
        conn.socket_timeout = timeout
        try:
            await conn.send_command("PING", check_health=False)
            return await conn.read_response(timeout=timeout) in (b"PONG", "PONG")
        except c.TRANSPORT_ERRORS:
            return False
        finally:
            conn.socket_timeout = configured


class KeepaliveMixin:
    """For ``GuardedBlockingConnectionPool``: the same sweep, run in the keepalive thread."""

    guard_policy: c.Policy
    pool: Any
    _connections: Any
    _guard_ka_watched = False
    _guard_ka_opened = False

    def make_connection(self) -> Any:
        conn = super().make_connection()  # type: ignore[misc]
        self._guard_ka_opened = True
        if not self._guard_ka_watched and self.keepalive_interval() is not None:
            self._guard_ka_watched = True
            keepalive.watch(self)
        return conn

    def keepalive_reconfigured(self) -> None:
        """``poolguard.reconfigure`` changed ``keepalive``: watched (or not) at once."""
        if self._guard_ka_opened:
            self._guard_ka_watched = keepalive.retune(self)

    def disconnect(self, inuse_connections: bool = True) -> None:
        keepalive.unwatch(self)
        self._guard_ka_watched = False
        self._guard_ka_opened = False
        super().disconnect(inuse_connections)  # type: ignore[misc]

    def keepalive_interval(self) -> float | None:
        return self.guard_policy.settings.keepalive

    def keepalive_stats(self) -> PoolStats:
        return self.guard_policy.guard.stats

    def keepalive_sweep(self, now: float) -> float | None:
        interval = self.keepalive_interval()
        if interval is None or not hasattr(self.pool, "mutex"):
            return None  # not a blocking pool's queue (a Sentinel pool): nothing to sweep
        for _ in range(len(self.pool.queue)):
            conn = self._ka_lend(time.monotonic(), interval)
            if conn is None:
                break
            self._ka_keep(conn)
        with self.pool.mutex:
            idle = list(self.pool.queue)
        return _next_due(idle, interval)

    def _ka_lend(self, now: float, interval: float) -> Any:
        queue = self.pool
        with queue.mutex:
            for i, conn in enumerate(queue.queue):
                if due(self, conn, now, interval):
                    queue.queue[i] = None  # its slot stays, as a placeholder
                    return conn
        return None

    def _ka_keep(self, conn: Any) -> None:
        self.guard_policy.guard.stats.incr("keepalive_pings")
        if self._ka_ping(conn):
            conn.guard_pinged = time.monotonic()
        else:
            _failed(self, conn)
            conn.disconnect()
            try:
                conn.connect()
            except c.TRANSPORT_ERRORS:
                pass  # reconnected at its next use, under the command's retries and deadline
        queue = self.pool
        with queue.mutex:
            for i in range(len(queue.queue) - 1, -1, -1):
                if queue.queue[i] is None:  # a slot nobody filled: ours again
                    del queue.queue[i]
                    queue.queue.append(conn)
                    return
        conn.disconnect()  # callers filled every placeholder meanwhile
        try:
            self._connections.remove(conn)
        except ValueError:
            pass

    def _ka_ping(self, conn: Any) -> bool:
        sock = conn._sock
        try:
            sock.settimeout(self.guard_policy.ping_timeout())
            conn.send_command("PING", check_health=False)
            return conn.read_response() in (b"PONG", "PONG")
        except c.TRANSPORT_ERRORS:
            return False
        finally:
            if conn._sock is not None:
                conn._sock.settimeout(conn.socket_timeout)
