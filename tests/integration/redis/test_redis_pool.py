"""Pool behaviour on a real server: acquire timeout, validation, eviction, blocking commands."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis_helpers import admin, in_background

import poolguard
import poolguard.redis
from poolguard.core.retry import Guard
from poolguard.errors import PoolTimeout

pytestmark = pytest.mark.redis

GRACE = 1.5


def test_is_a_real_redis_client(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, decode_responses=True)
    assert isinstance(client, redis.Redis)
    client.set(key, "v")
    assert client.get(key) == "v"
    assert client.pipeline().get(key).execute() == ["v"]


async def test_async_is_a_real_redis_client(redis_server: Any, aguarded: Any, key: str) -> None:
    client = aguarded(redis_server.url, decode_responses=True)
    assert isinstance(client, redis.asyncio.Redis)
    await client.set(key, "v")
    assert await client.get(key) == "v"


def test_from_url_reads_redis_url_and_prefixed_settings(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("POOLGUARD_QUERY_TIMEOUT", "9s")
    monkeypatch.setenv("POOLGUARD_REDIS_QUERY_TIMEOUT", "250ms")
    monkeypatch.setenv("POOLGUARD_REDIS_POOL_SIZE", "3")
    client = poolguard.redis.from_url()
    try:
        assert client.ping()
        kwargs = client.get_connection_kwargs()
        assert kwargs["socket_timeout"] == pytest.approx(0.25)
        assert client.connection_pool.max_connections == 3
        assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    finally:
        client.close()


def test_acquire_timeout_is_a_dropin_pool_timeout(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, pool_size=1, acquire_timeout="100ms")
    holder = client.pipeline()
    holder.watch(key)  # holds the only connection
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as caught:
        client.get(key)
    assert isinstance(caught.value, redis.exceptions.ConnectionError)
    assert time.monotonic() - started < 0.1 + GRACE
    holder.reset()
    assert client.get(key) is None


def test_acquire_wait_is_cut_by_the_deadline(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, pool_size=1, acquire_timeout="10s")
    holder = client.pipeline()
    holder.watch(key)
    started = time.monotonic()
    with pytest.raises(PoolTimeout), poolguard.deadline(0.2):
        client.get(key)
    assert time.monotonic() - started < 0.2 + GRACE
    holder.reset()


@pytest.mark.chaos
def test_validation_after_idle_and_ping_failure_reconnects(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, validate_idle="50ms", client_name="pg-validate")
    client.set(key, "v")
    time.sleep(0.1)
    assert client.get(key) == b"v"
    stats = poolguard.redis.stats(client)
    assert stats["validations"] == 1
    assert stats["validation_failures"] == 0
    redis_server.kill_connections(application_name="pg-validate")
    time.sleep(0.1)
    assert client.get(key) == b"v"
    assert poolguard.redis.stats(client)["connects"] == 2


def test_fresh_and_recently_used_connections_are_not_pinged(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, validate_idle="10s")
    for _ in range(20):
        client.get(key)
    assert poolguard.redis.stats(client)["validations"] == 0


def test_lifetime_and_idle_eviction(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, max_lifetime="200ms", max_idle="150ms", validate_idle="off")
    client.get(key)
    time.sleep(0.25)
    client.get(key)
    evictions = poolguard.redis.stats(client)["evictions"]
    assert evictions["lifetime"] + evictions["idle"] == 1
    assert poolguard.redis.stats(client)["connects"] == 2


@pytest.mark.chaos
def test_frozen_server_validation_has_its_own_short_timeout(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    client = guarded(
        server.url,
        validate_idle="50ms",
        connect_timeout="200ms",
        query_timeout="5s",
        retry_timeout="1s",  # connect failures are retried for a time window, not a count
    )
    client.ping()
    time.sleep(0.1)
    started = time.monotonic()
    with server.frozen(), pytest.raises(redis.exceptions.RedisError):
        client.get("k")
    # PING (<= 200 ms), then reconnects whose handshakes are bounded by the 200 ms connect
    # timeout (not the 5 s command timeout), retried for the 1 s retry window.
    assert time.monotonic() - started < 1.0 + 0.2 + GRACE
    assert poolguard.redis.stats(client)["validation_failures"] == 1


def test_blocking_command_gets_its_block_time_on_top_of_the_socket_timeout(
    redis_server: Any, guarded: Any, key: str
) -> None:
    # The margin over the block time is the query timeout: 300 ms, not 100 ms, because the
    # server's own block timer runs late on a loaded machine (CI matrix: a 0.4 s BLPOP timed out
    # at 0.5 s). Still shorter than the block, so a socket timeout alone would cut it.
    client = guarded(redis_server.url, query_timeout="300ms")
    started = time.monotonic()
    assert client.blpop([key], timeout=0.5) is None  # a legitimate block, not a hang
    assert time.monotonic() - started >= 0.45
    assert poolguard.redis.stats(client)["retries"] == 0
    threading.Timer(0.2, lambda: admin(redis_server).rpush(key, "x")).start()
    assert client.blpop([key], timeout=2) == (key.encode(), b"x")


def test_xread_block_and_deadline(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, query_timeout="300ms")  # see the BLPOP test: margin
    assert client.xread({key: "$"}, block=500) == []
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError), poolguard.deadline(0.2):
        client.xread({key: "$"}, block=0)  # would block forever: the deadline bounds it
    assert time.monotonic() - started < 0.2 + GRACE


async def test_async_blocking_command_and_deadline(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, query_timeout="300ms")  # see the BLPOP test: margin
    assert await client.blpop([key], timeout=0.5) is None
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        async with poolguard.deadline(0.2):
            await client.blpop([key], timeout=0)
    assert time.monotonic() - started < 0.2 + GRACE


async def test_async_acquire_timeout(redis_server: Any, aguarded: Any, key: str) -> None:
    client = aguarded(redis_server.url, pool_size=1, acquire_timeout="100ms")
    blocker = asyncio.create_task(client.blpop([key], timeout=1))
    await asyncio.sleep(0.05)
    with pytest.raises(PoolTimeout) as caught:
        await client.get(key)
    assert isinstance(caught.value, redis.exceptions.ConnectionError)
    await blocker


async def test_async_validation_after_idle(redis_server: Any, aguarded: Any, key: str) -> None:
    client = aguarded(redis_server.url, validate_idle="50ms")
    await client.get(key)
    await asyncio.sleep(0.1)
    await client.get(key)
    assert poolguard.redis.stats(client)["validations"] == 1


def test_stats_gauges(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, pool_size=4)
    client.get(key)
    snap = poolguard.redis.stats(client)
    assert snap["backend"] == "redis"
    assert snap["size"] == 1
    assert snap["idle"] == 1
    assert snap["checked_out"] == 0
    assert snap["max_size"] == 4
    assert snap["requests"] >= 1
    assert "password" not in repr(snap)


def test_password_never_in_messages(dedicated_server: Any, key: str) -> None:
    server = dedicated_server("redis", password="s3cret-pw")
    wrong = server.url.replace("s3cret-pw", "wrong-pw")
    client = poolguard.redis.from_url(wrong, retry_attempts=3)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError) as caught:
            client.get(key)
        assert "wrong-pw" not in str(caught.value)
        assert poolguard.redis.stats(client)["retries"] == 0  # a wrong password is not retried
    finally:
        client.close()
    good = poolguard.redis.from_url(server.url)
    try:
        assert good.ping()
        assert "s3cret-pw" not in poolguard.redis.stats(good)["name"]
    finally:
        good.close()


@pytest.mark.chaos
def test_handshake_with_a_frozen_server_is_bounded_by_the_deadline(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    client = guarded(server.url, query_timeout="3s", connect_timeout="3s")
    started = time.monotonic()
    with server.frozen(), pytest.raises(redis.exceptions.TimeoutError), poolguard.deadline(0.3):
        client.get("k")  # TCP connect succeeds (kernel backlog), HELLO never answers
    assert time.monotonic() - started < 0.3 + GRACE
    # The connection's command timeout is back to 3 s: a 0.5 s stall is not a timeout.
    with poolguard.deadline(5):
        client.ping()
    stall = in_background(lambda: admin(server).execute_command("DEBUG", "SLEEP", 0.5))
    time.sleep(0.05)
    assert client.get("k") is None
    stall.join()


@pytest.mark.chaos
async def test_async_handshake_with_a_frozen_server_is_bounded_by_the_deadline(
    dedicated_server: Any, aguarded: Any
) -> None:
    server = dedicated_server("redis")
    client = aguarded(server.url, query_timeout="3s", connect_timeout="3s")
    started = time.monotonic()
    with server.frozen(), pytest.raises(redis.exceptions.TimeoutError):
        async with poolguard.deadline(0.3):
            await client.get("k")
    assert time.monotonic() - started < 0.3 + GRACE
    async with poolguard.deadline(5):
        await client.ping()
    assert await client.get("k") is None


async def test_async_deadline_timeout_does_not_stay_on_the_connection(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    # With no query timeout, a command under a deadline borrows the deadline's remainder as its
    # socket timeout; it must be given back, not left on the pooled connection (it was: None
    # was both "no timeout configured" and "nothing to restore").
    client = aguarded(redis_server.url, query_timeout="off", pool_size=1)
    with poolguard.deadline(5):
        await client.set(key, "1")
        await client.pipeline().get(key).get(key).execute()
    conn = await client.connection_pool.get_connection()
    try:
        assert conn.socket_timeout is None
    finally:
        await client.connection_pool.release(conn)


def test_deadline_timeout_does_not_stay_on_the_connection(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, query_timeout="off", pool_size=1)
    with poolguard.deadline(5):
        client.set(key, "1")
        client.pipeline().get(key).get(key).execute()
    conn = client.connection_pool.get_connection()
    try:
        assert conn.socket_timeout is None
        assert conn._sock is not None
        assert conn._sock.gettimeout() is None
    finally:
        client.connection_pool.release(conn)


def _no_loop(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the retry loop was built for a call whose first attempt succeeded")


def test_a_command_that_succeeds_builds_no_retry_loop(
    redis_server: Any, guarded: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop (an Attempts object, a closure, a frame) is built only after a failure; the
    # first attempt is counted and breaker-checked all the same.
    r = guarded(redis_server.url)
    r.ping()
    monkeypatch.setattr(Guard, "run_with", _no_loop)
    before = poolguard.redis.stats(r)["requests"]
    r.set(key, "v")
    assert r.get(key) == b"v"
    pipe = r.pipeline(transaction=False)
    pipe.get(key).set(key, "w")
    assert pipe.execute() == [b"v", True]
    assert poolguard.redis.stats(r)["requests"] == before + 3


async def test_async_command_that_succeeds_builds_no_retry_loop(
    redis_server: Any, aguarded: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = aguarded(redis_server.url)
    await r.ping()
    monkeypatch.setattr(Guard, "arun_with", _no_loop)
    before = poolguard.redis.stats(r)["requests"]
    await r.set(key, "v")
    assert await r.get(key) == b"v"
    pipe = r.pipeline(transaction=True)
    pipe.get(key).set(key, "w")
    assert await pipe.execute() == [b"v", True]
    assert poolguard.redis.stats(r)["requests"] == before + 3
