"""Pub/sub: subscriptions come back after CLIENT KILL and restarts (at-most-once meanwhile)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from redis_helpers import admin, in_background, kill_by_name

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

WAIT = 5.0


def next_message(pubsub: Any, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


def publish_until_received(server: Any, pubsub: Any, channel: str, data: str) -> Any:
    """Publish repeatedly: a message sent before the resubscription lands is lost by design."""
    end = time.monotonic() + WAIT
    with admin(server) as publisher:
        while time.monotonic() < end:
            publisher.publish(channel, data)
            message = next_message(pubsub, timeout=0.2)
            if message is not None:
                return message
    return None


def test_resubscribes_after_client_kill(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, client_name="pg-pubsub-kill")
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    pubsub.psubscribe(f"{key}:*")
    assert publish_until_received(redis_server, pubsub, key, "before")["data"] == b"before"
    assert kill_by_name(redis_server, "pg-pubsub-kill") >= 1
    message = publish_until_received(redis_server, pubsub, key, "after")
    assert message is not None
    assert message["data"] == b"after"
    pattern = publish_until_received(redis_server, pubsub, f"{key}:x", "p")
    assert pattern["pattern"] == f"{key}:*".encode()
    pubsub.close()


@pytest.mark.slow
def test_resubscribes_after_a_restart(dedicated_server: Any, guarded: Any) -> None:
    server = dedicated_server("redis")
    client = guarded(server.url, connect_timeout="200ms")
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert publish_until_received(server, pubsub, "news", "1")["data"] == b"1"
    restart = in_background(lambda: server.restart(downtime=0.5))
    # Reading through the outage: errors are retried inside get_message, not raised.
    while restart.is_alive():
        pubsub.get_message(timeout=0.05)
    message = publish_until_received(server, pubsub, "news", "2")
    assert message is not None
    assert message["data"] == b"2"
    pubsub.close()


def test_plain_redis_py_pubsub_raises_on_client_kill_for_comparison(
    redis_server: Any, key: str
) -> None:
    client = redis.Redis.from_url(redis_server.url, client_name="pg-pubsub-anchor")
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    next_message(pubsub, timeout=0.2)
    kill_by_name(redis_server, "pg-pubsub-anchor")
    try:
        outcome: Any = next_message(pubsub, timeout=0.5)
    except redis.exceptions.ConnectionError as exc:
        outcome = exc
    print(f"anchor: redis-py pub/sub after CLIENT KILL -> {outcome!r}")
    pubsub.close()
    client.close()


async def async_next_message(pubsub: Any, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


async def async_publish_until_received(server: Any, pubsub: Any, channel: str, data: str) -> Any:
    end = time.monotonic() + WAIT
    with admin(server) as publisher:
        while time.monotonic() < end:
            publisher.publish(channel, data)
            message = await async_next_message(pubsub, timeout=0.2)
            if message is not None:
                return message
    return None


async def test_async_resubscribes_after_client_kill(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, client_name="pg-apubsub-kill")
    pubsub = client.pubsub()
    await pubsub.subscribe(key)
    first = await async_publish_until_received(redis_server, pubsub, key, "before")
    assert first["data"] == b"before"
    assert kill_by_name(redis_server, "pg-apubsub-kill") >= 1
    await asyncio.sleep(0.05)
    message = await async_publish_until_received(redis_server, pubsub, key, "after")
    assert message is not None
    assert message["data"] == b"after"
    await pubsub.aclose()


@pytest.mark.slow
async def test_async_resubscribes_after_a_restart(dedicated_server: Any, aguarded: Any) -> None:
    server = dedicated_server("redis")
    client = aguarded(server.url, connect_timeout="200ms")
    pubsub = client.pubsub()
    await pubsub.subscribe("news")
    assert (await async_publish_until_received(server, pubsub, "news", "1"))["data"] == b"1"
    restart = in_background(lambda: server.restart(downtime=0.5))
    while restart.is_alive():
        await pubsub.get_message(timeout=0.05)
    message = await async_publish_until_received(server, pubsub, "news", "2")
    assert message is not None
    assert message["data"] == b"2"
    await pubsub.aclose()
