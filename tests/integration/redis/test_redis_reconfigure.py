"""Live reconfiguration (poolguard.reconfigure) of poolguard.redis clients."""

from __future__ import annotations

from typing import Any

import pytest
import redis

import poolguard
import poolguard.redis

pytestmark = pytest.mark.redis

#: Latency the proxy adds to every reply: longer than the new command timeout, far shorter
#: than the old one (a margin, not a measured bound).
LATENCY = 0.5


def test_query_timeout_change_on_a_live_client(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="5s", retry_attempts=1)
    client.set(key, "v")
    proxy.latency(LATENCY)
    assert client.get(key) == b"v"  # slow, within the old timeout
    proxy.clear()
    poolguard.reconfigure(client, query_timeout="100ms", validate_idle="off")
    assert client.ping()  # the pooled connection (5 s socket timeout) is replaced here
    proxy.latency(LATENCY)
    with pytest.raises(redis.exceptions.TimeoutError):
        client.get(key)
    proxy.clear()
    snap = poolguard.redis.stats(client)
    assert snap["reconfigured"] == 1
    assert snap["settings"]["query_timeout"] == 0.1
    assert snap["settings"]["validate_idle"] is None


def test_retry_policy_and_refusals(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url)
    client.set(key, "1")
    with pytest.raises(poolguard.ConfigError, match="lock_timeout"):
        poolguard.reconfigure(client, retry_attempts=2, lock_timeout=1)
    with pytest.raises(poolguard.ConfigError, match="retry_atempts"):
        poolguard.reconfigure(client, retry_atempts=2)
    assert poolguard.redis.stats(client)["settings"]["retry_attempts"] == 40
    assert poolguard.reconfigure(client, retry_attempts=2) == {"retry_attempts": (40, 2)}
    pool: Any = client.connection_pool
    assert pool.guard_policy.guard.policy.attempts == 2
    assert client.get(key) == b"1"


async def test_async_client(redis_server: Any, fault_proxy: Any, aguarded: Any, key: str) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="5s", retry_attempts=1)
    await client.set(key, "v")
    poolguard.reconfigure(client, query_timeout="100ms")
    assert await client.ping()
    proxy.latency(LATENCY)
    with pytest.raises(redis.exceptions.TimeoutError):
        await client.get(key)
    proxy.clear()
    assert poolguard.redis.stats(client)["reconfigured"] == 1
