"""Keepalive (``POOLGUARD_KEEPALIVE``) of the guarded Redis pools, against a real Redis.

Redis closes clients idle longer than its ``timeout``: with keepalive shorter than it the same
server-side clients survive the lull (same CLIENT ID); without it the next command pays a
reconnect (redis-py sees the closed socket at checkout). Through a NAT-like idle cut
(FaultProxy.idle_cut) the asyncio pool finds the forgotten connection and reconnects it before
a command does. Waits are for conditions; ping
counts stand for elapsed time (a connection is pinged at most once per interval).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import poolguard
from poolguard.core import keepalive

pytestmark = [pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

HANG_GUARD = 30.0
BARE: dict[str, Any] = {"validate_idle": None, "max_idle": None, "retry_attempts": 1}


def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never became true"
        time.sleep(0.02)


def _client_ids(client: Any, n: int = 2) -> set[int]:
    """CLIENT ID of ``n`` pool connections held at once."""
    pool = client.connection_pool
    conns = [pool.get_connection() for _ in range(n)]
    try:
        ids = set()
        for conn in conns:
            conn.send_command("CLIENT", "ID")
            ids.add(int(conn.read_response()))
        return ids
    finally:
        for conn in conns:
            pool.release(conn)


@pytest.mark.parametrize("keep", [None, 0.3], ids=["no-keepalive", "keepalive-0.3s"])
def test_server_timeout_kept_alive(guarded: Any, dedicated_server: Any, keep: Any) -> None:
    server = dedicated_server("redis")
    admin = redis.Redis.from_url(server.url)
    admin.config_set("timeout", 1)
    try:
        client = guarded(server.url, keepalive=keep, **BARE)
        before = _client_ids(client)
        if keep is None:
            # The server's own count says it closed them: no clock needed.
            until(lambda: admin.info("clients")["connected_clients"] == 1, "idle clients closed")
            # redis-py notices the closed socket at checkout and reconnects inside the request.
            assert not _client_ids(client) & before
            return
        until(lambda: poolguard.stats(client)["keepalive_pings"] >= 2 * 6, "6 keepalive rounds")
        assert _client_ids(client) == before  # the same server-side clients: kept alive
        assert client.ping()
        assert poolguard.stats(client)["keepalive_failures"] == 0
    finally:
        admin.close()


async def test_asyncio_idle_cut_found_and_reconnected(
    aguarded: Any, redis_server: Any, fault_proxy: Any
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), keepalive=0.8, **BARE)
    assert await client.ping()
    proxy.idle_cut(0.2)
    stop = time.monotonic() + HANG_GUARD
    while poolguard.stats(client)["evictions"]["keepalive"] < 1:
        assert time.monotonic() < stop, "the cut connection was never found"
        await asyncio.sleep(0.02)  # the sweep is a task on this loop
    proxy.clear()
    assert proxy.idle_cuts >= 1
    while poolguard.stats(client)["connects"] < 2:
        assert time.monotonic() < stop, "the connection was never replaced"
        await asyncio.sleep(0.02)
    # The replacement may have been opened before clear() and cut too: wait for a clean ping.
    ok = poolguard.stats(client)["keepalive_pings"] - poolguard.stats(client)["keepalive_failures"]
    while _ok(client) < ok + 1:
        assert time.monotonic() < stop, "no clean ping after the cut was lifted"
        await asyncio.sleep(0.02)
    assert await client.ping()
    watched = keepalive.watched()
    await client.connection_pool.disconnect()
    assert keepalive.watched() == watched - 1


def _ok(client: Any) -> int:
    snap = poolguard.stats(client)
    return int(snap["keepalive_pings"] - snap["keepalive_failures"])
