"""Server restarts and killed connections: reads never fail, writes are never doubled."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from redis_helpers import admin, in_background

import poolguard.redis

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

DOWNTIME = 1.0


@pytest.mark.slow
def test_gets_through_a_restart_with_downtime_have_zero_errors(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    client = guarded(server.url, pool_size=4, query_timeout="500ms", connect_timeout="200ms")
    client.set("k", "v")
    restart = in_background(lambda: server.restart(downtime=DOWNTIME))
    errors, answers = [], 0
    deadline = time.monotonic() + DOWNTIME + 3.0
    while restart.is_alive() or time.monotonic() < deadline - 2.0:
        try:
            # The restarted server has no data (no persistence): None is a correct answer.
            assert client.get("k") in (b"v", None)
            answers += 1
        except redis.exceptions.RedisError as exc:
            errors.append(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    restart.join()
    stats = poolguard.redis.stats(client)
    print(f"restart: {answers} GETs, {len(errors)} errors, retries={stats['retries_by_reason']}")
    assert errors == []
    assert stats["retries"] > 0
    assert stats["connect_failures"] > 0


@pytest.mark.slow
async def test_async_gets_through_a_restart_with_downtime_have_zero_errors(
    dedicated_server: Any, aguarded: Any
) -> None:
    server = dedicated_server("redis")
    client = aguarded(server.url, pool_size=4, query_timeout="500ms", connect_timeout="200ms")
    await client.set("k", "v")
    restart = in_background(lambda: server.restart(downtime=DOWNTIME))
    errors, answers = [], 0
    while restart.is_alive():
        try:
            assert await client.get("k") in (b"v", None)
            answers += 1
        except redis.exceptions.RedisError as exc:
            errors.append(exc)
        await asyncio.sleep(0.01)
    print(f"async restart: {answers} GETs, {len(errors)} errors")
    assert errors == []
    assert poolguard.redis.stats(client)["retries"] > 0


def test_client_kill_of_pooled_connections_is_invisible(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, pool_size=3, client_name="pg-kill-sync")
    admin(redis_server).set(key, 0)
    # Fill the pool with three idle connections.
    with client.pipeline() as p1, client.pipeline() as p2, client.pipeline() as p3:
        for pipe in (p1, p2, p3):
            pipe.watch(key)
    assert poolguard.redis.stats(client)["idle"] == 3
    killed = redis_server.kill_connections(application_name="pg-kill-sync")
    assert killed == 3
    # A dead idle socket is found at checkout, before the command is sent: INCR is safe.
    for _ in range(5):
        client.incr(key)
    assert int(admin(redis_server).get(key)) == 5
    assert client.get(key) == b"5"


async def test_async_client_kill_of_pooled_connections_is_invisible(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, pool_size=3, client_name="pg-kill-async")
    admin(redis_server).set(key, 0)
    await asyncio.gather(*(client.get(key) for _ in range(3)))
    assert redis_server.kill_connections(application_name="pg-kill-async") >= 1
    for _ in range(5):
        await client.incr(key)
    assert int(admin(redis_server).get(key)) == 5
