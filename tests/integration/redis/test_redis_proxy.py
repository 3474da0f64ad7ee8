"""Network faults through the fault proxy: blackhole, latency, reset, refused connects."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
from redis_helpers import admin

import poolguard
import poolguard.redis
from poolguard.errors import AmbiguousResultError, CircuitOpenError

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

GRACE = 1.5


def test_blackhole_is_bounded_by_the_deadline(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="5s", connect_timeout="5s")
    client.ping()
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError), poolguard.deadline(0.3):
        client.get(key)
    assert time.monotonic() - started < 0.3 + GRACE


def test_incr_into_a_blackhole_is_ambiguous_and_applied_at_most_once(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="200ms")
    client.ping()
    proxy.blackhole("downstream")  # the command reaches Redis, the reply never comes back
    with pytest.raises(AmbiguousResultError) as caught:
        client.incr(key)
    assert isinstance(caught.value, redis.exceptions.TimeoutError)
    proxy.clear()
    assert int(admin(redis_server).get(key)) == 1
    # The client recovers on a fresh connection.
    assert client.incr(key) == 2


def test_get_survives_a_downstream_blackhole_episode(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    admin(redis_server).set(key, "v")
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="150ms")
    client.ping()
    proxy.blackhole()
    threading.Timer(0.4, proxy.clear).start()
    assert client.get(key) == b"v"
    assert poolguard.redis.stats(client)["retries_by_reason"].get("read_timeout", 0) >= 1


def test_reset_connections_are_retried_for_reads_and_never_doubled_for_writes(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    """Every acknowledged INCR is applied exactly once; ambiguous ones at most once."""
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="300ms", pool_size=2)
    counter = f"{key}:n"
    admin(redis_server).set(key, "v")
    acked = ambiguous = read_errors = 0
    stop = time.monotonic() + 2.0

    def chaos() -> None:
        while time.monotonic() < stop:
            time.sleep(0.05)
            proxy.reset()
            time.sleep(0.02)
            proxy.clear()

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    while time.monotonic() < stop:
        try:
            client.incr(counter)
            acked += 1
        except AmbiguousResultError:
            ambiguous += 1
        try:
            assert client.get(key) == b"v"
        except redis.exceptions.RedisError:
            read_errors += 1
    thread.join()
    proxy.clear()
    applied = int(admin(redis_server).get(counter) or 0)
    print(f"reset chaos: acked={acked} ambiguous={ambiguous} applied={applied}")
    print(f"reset chaos: read errors={read_errors}")
    assert acked <= applied <= acked + ambiguous
    assert read_errors == 0


def test_latency_under_the_timeout_is_not_a_failure(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="500ms")
    client.ping()
    proxy.latency(0.1)
    assert client.incr(key) == 1
    assert poolguard.redis.stats(client)["retries"] == 0


def test_refused_connects_open_the_breaker_and_fail_fast(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(
        proxy.url(redis_server.url),
        breaker_failures=3,
        breaker_reset="30s",
        retry_attempts=2,
        connect_timeout="200ms",
    )
    proxy.down()
    for _ in range(3):
        with pytest.raises(redis.exceptions.ConnectionError):
            client.get(key)
    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as caught:
        client.get(key)
    assert isinstance(caught.value, redis.exceptions.ConnectionError)  # drop-in
    assert time.monotonic() - started < 0.1  # no network touched
    assert poolguard.redis.stats(client)["breaker"]["state"] == "open"
    proxy.up()


async def test_async_incr_into_a_blackhole_is_ambiguous(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="200ms")
    await client.ping()
    proxy.blackhole("downstream")
    with pytest.raises(AmbiguousResultError):
        await client.incr(key)
    proxy.clear()
    assert int(admin(redis_server).get(key)) == 1
    assert await client.incr(key) == 2


async def test_async_blackhole_is_bounded_by_the_deadline(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="5s")
    await client.ping()
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        async with poolguard.deadline(0.3):
            await client.get(key)
    assert time.monotonic() - started < 0.3 + GRACE


async def test_async_reset_chaos_never_doubles_writes(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="300ms", pool_size=2)
    acked = ambiguous = 0
    stop = time.monotonic() + 1.5

    async def chaos() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(0.05)
            await asyncio.to_thread(proxy.reset)
            await asyncio.sleep(0.02)
            await asyncio.to_thread(proxy.clear)

    task = asyncio.create_task(chaos())
    while time.monotonic() < stop:
        try:
            await client.incr(key)
            acked += 1
        except AmbiguousResultError:
            ambiguous += 1
    await task
    proxy.clear()
    applied = int(admin(redis_server).get(key) or 0)
    print(f"async reset chaos: acked={acked} ambiguous={ambiguous} applied={applied}")
    assert acked <= applied <= acked + ambiguous
