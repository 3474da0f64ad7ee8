"""Pipelines and MULTI/EXEC under faults: replayed only when every command is safe."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis_helpers import admin

import poolguard
import poolguard.redis
from poolguard.errors import AmbiguousResultError

pytestmark = [pytest.mark.redis, pytest.mark.chaos]


def blackhole_for(proxy: Any, seconds: float, direction: str = "downstream") -> None:
    proxy.blackhole(direction)
    threading.Timer(seconds, proxy.clear).start()


@pytest.mark.parametrize("transaction", [True, False], ids=["multi-exec", "plain"])
def test_pipeline_with_a_non_idempotent_command_is_never_replayed(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str, transaction: bool
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="200ms")
    client.ping()
    pipe = client.pipeline(transaction=transaction)
    pipe.set(f"{key}:s", "v").incr(key).get(key)
    blackhole_for(proxy, 0.5)
    with pytest.raises(AmbiguousResultError) as caught:
        pipe.execute()
    assert isinstance(caught.value, redis.exceptions.TimeoutError)
    time.sleep(0.6)
    assert int(admin(redis_server).get(key)) == 1


@pytest.mark.parametrize("transaction", [True, False], ids=["multi-exec", "plain"])
def test_idempotent_pipeline_is_replayed_as_a_whole(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str, transaction: bool
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="200ms")
    client.ping()
    pipe = client.pipeline(transaction=transaction)
    pipe.set(key, "v").get(key).expire(key, 60)
    blackhole_for(proxy, 0.35)
    assert pipe.execute() == [True, b"v", True]
    assert poolguard.redis.stats(client)["retries"] >= 1


def test_caller_vouched_pipeline_is_replayed(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="200ms")
    client.ping()
    pipe = client.pipeline(idempotent=True)
    pipe.incr(key).get(key)
    blackhole_for(proxy, 0.35, "upstream")  # the request never arrives: replay applies once
    result = pipe.execute()
    assert result[0] == int(result[1])


def test_multi_exec_not_fully_sent_is_retried_for_any_command(
    redis_server: Any, guarded: Any, key: str
) -> None:
    """A MULTI whose EXEC never left the client ran nothing: a dead socket at send is safe."""
    client = guarded(redis_server.url, client_name="pg-pipe-kill")
    client.ping()
    redis_server.kill_connections(application_name="pg-pipe-kill")
    pipe = client.pipeline()
    pipe.incr(key).incr(key)
    assert pipe.execute() == [1, 2]
    assert int(admin(redis_server).get(key)) == 2


def test_watch_error_is_never_retried(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url)
    client.set(key, 1)
    with client.pipeline() as pipe:
        pipe.watch(key)
        admin(redis_server).set(key, 2)  # a concurrent writer
        pipe.multi()
        pipe.incr(key)
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
    assert int(admin(redis_server).get(key)) == 2
    assert poolguard.redis.stats(client)["retries"] == 0


def test_lost_watch_connection_before_exec_is_a_watch_error(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, client_name="pg-watch-kill")
    client.set(key, 1)
    with client.pipeline() as pipe:
        pipe.watch(key)
        value = int(pipe.get(key))
        redis_server.kill_connections(application_name="pg-watch-kill")
        pipe.multi()
        pipe.set(key, value + 1)
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
    assert int(admin(redis_server).get(key)) == 1


def test_lost_exec_reply_under_watch_is_ambiguous_not_a_watch_error(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    """redis-py raises WatchError here, and ``Redis.transaction()`` would re-run the function."""
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="200ms")
    client.set(key, 1)
    with client.pipeline() as pipe:
        pipe.watch(key)
        pipe.multi()
        pipe.incr(key)
        blackhole_for(proxy, 0.5)
        with pytest.raises(AmbiguousResultError):
            pipe.execute()
    time.sleep(0.6)
    assert int(admin(redis_server).get(key)) == 2


def test_transaction_helper_works(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url)
    client.set(key, 5)

    def double(pipe: Any) -> None:
        value = int(pipe.get(key))
        pipe.multi()
        pipe.set(key, value * 2)

    client.transaction(double, key)
    assert int(admin(redis_server).get(key)) == 10


async def test_async_pipeline_with_incr_is_never_replayed(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="200ms")
    await client.ping()
    pipe = client.pipeline()
    pipe.incr(key).get(key)
    blackhole_for(proxy, 0.5)
    with pytest.raises(AmbiguousResultError):
        await pipe.execute()
    time.sleep(0.6)
    assert int(admin(redis_server).get(key)) == 1


async def test_async_idempotent_pipeline_is_replayed(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="200ms")
    await client.ping()
    pipe = client.pipeline(transaction=False)
    pipe.set(key, "v").get(key)
    blackhole_for(proxy, 0.35)
    assert await pipe.execute() == [True, b"v"]


async def test_async_watch_error_is_never_retried(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url)
    await client.set(key, 1)
    async with client.pipeline() as pipe:
        await pipe.watch(key)
        admin(redis_server).set(key, 2)
        pipe.multi()
        pipe.incr(key)
        with pytest.raises(redis.exceptions.WatchError):
            await pipe.execute()
    assert int(admin(redis_server).get(key)) == 2


def test_commands_while_watching_are_bounded_by_the_deadline(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url), query_timeout="5s")
    client.set(key, 1)
    with client.pipeline() as pipe:
        pipe.watch(key)
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.RedisError), poolguard.deadline(0.3):
            pipe.get(key)  # pinned to the WATCH connection: not retried, but not 5 s either
        assert time.monotonic() - started < 0.3 + 1.5
    proxy.clear()


async def test_async_commands_while_watching_are_bounded_by_the_deadline(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url), query_timeout="5s")
    await client.set(key, 1)
    async with client.pipeline() as pipe:
        await pipe.watch(key)
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.RedisError):
            async with poolguard.deadline(0.3):
                await pipe.get(key)
        assert time.monotonic() - started < 0.3 + 1.5
    proxy.clear()


def test_an_error_reply_in_a_pipeline_is_raised_or_returned(
    redis_server: Any, guarded: Any, key: str
) -> None:
    r = guarded(redis_server.url)
    r.set(key, "v")
    pipe = r.pipeline(transaction=False)
    pipe.get(key).lpush(key, "x").get(key)
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        pipe.execute()
    pipe.get(key).lpush(key, "x")
    got, err = pipe.execute(raise_on_error=False)
    assert got == b"v"
    assert isinstance(err, redis.exceptions.ResponseError)
    assert r.pipeline(transaction=False).get(key).execute() == [b"v"]


async def test_async_error_reply_in_a_pipeline_is_raised(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    r = aguarded(redis_server.url)
    await r.set(key, "v")
    pipe = r.pipeline(transaction=False)
    pipe.get(key).lpush(key, "x")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await pipe.execute()
    assert await r.pipeline(transaction=False).get(key).execute() == [b"v"]
