"""Pub/sub through drops and restarts: a read honours its timeout, a lost subscription is never
hidden (ConnectionError by default, on_resubscribe when opted in), channels are resubscribed
exactly once, and delivery resumes. Sync and asyncio, several subscribers at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from redis_helpers import admin, in_background, kill_by_name

import poolguard.redis
from poolguard.errors import PoolguardError, PoolTimeout
from poolguard.integrations.redis import _common as c
from poolguard.redis import ResubscribeGap, SubscriptionLost

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

WAIT = 5.0
#: A read with timeout=0.1 must be back within this much more (the box is shared and loaded;
#: before the fix such a read took 7-12 s during a restart).
GRACE = 1.5
SUBSCRIBERS = 4


def next_message(pubsub: Any, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


def publish_until_received(server: Any, pubsub: Any, channel: str, data: str) -> Any:
    """Publish repeatedly: a message sent before the resubscription lands is lost by design.

    Reads may still raise ConnectionError for a moment after an outage: the circuit breaker
    (on, at its defaults) keeps reconnects off the server until its next probe is due, and a
    read waits for that probe only when it fits the read's timeout, as redis-py users expect.
    """
    end = time.monotonic() + WAIT
    with admin(server) as publisher:
        while time.monotonic() < end:
            publisher.publish(channel, data)
            try:
                message = next_message(pubsub, timeout=0.2)
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
                continue
            if message is not None:
                return message
    return None


def read_until_error(pubsub: Any, reads: int = 20) -> BaseException | None:
    """The error a few reads run into (the kill reaches the socket within a few reads)."""
    for _ in range(reads):
        try:
            pubsub.get_message(timeout=0.1)
        except Exception as exc:
            return exc
    return None


def confirmations(pubsub: Any, seconds: float = 0.5) -> Counter[tuple[str, bytes]]:
    """Subscribe confirmations seen in ``seconds`` (messages are dropped)."""
    seen: Counter[tuple[str, bytes]] = Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        message = pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] in ("subscribe", "psubscribe"):
            seen[message["type"], message["channel"]] += 1
    return seen


def test_a_killed_subscription_raises_then_resubscribes_exactly_once(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, client_name="pg-pubsub-kill")
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    pubsub.psubscribe(f"{key}:*")
    assert confirmations(pubsub) == {
        ("subscribe", key.encode()): 1,
        ("psubscribe", f"{key}:*".encode()): 1,
    }
    assert kill_by_name(redis_server, "pg-pubsub-kill") >= 1
    start = time.monotonic()
    lost = read_until_error(pubsub)
    assert isinstance(lost, redis.exceptions.ConnectionError)
    assert isinstance(lost, SubscriptionLost)
    assert "messages published until it is back are lost" in str(lost)
    assert time.monotonic() - start < 2.0 + GRACE
    # The next read reconnects; redis-py's callback resubscribes each channel and pattern once.
    assert confirmations(pubsub) == {
        ("subscribe", key.encode()): 1,
        ("psubscribe", f"{key}:*".encode()): 1,
    }
    assert publish_until_received(redis_server, pubsub, key, "after")["data"] == b"after"
    pattern = publish_until_received(redis_server, pubsub, f"{key}:x", "p")
    assert pattern["pattern"] == f"{key}:*".encode()
    stats = poolguard.redis.stats(client)
    assert (stats["pubsub_drops"], stats["resubscribes"]) == (1, 1)
    pubsub.close()


def test_listen_raises_when_the_subscription_is_killed(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(redis_server.url, client_name="pg-listen-kill")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    outcome: list[Any] = []

    def listen() -> None:
        try:
            for message in pubsub.listen():
                outcome.append(message)
        except Exception as exc:
            outcome.append(exc)

    listener = in_background(listen)
    time.sleep(0.2)
    assert kill_by_name(redis_server, "pg-listen-kill") >= 1
    listener.join(timeout=WAIT)
    assert not listener.is_alive(), "listen() hung after its connection was killed"
    assert isinstance(outcome[-1], redis.exceptions.ConnectionError)
    pubsub.close()


def _subscriber_through_restart(
    server: Any, client: Any, channel: str, durations: list[float], errors: list[BaseException]
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    next_message(pubsub, timeout=0.3)
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            pubsub.get_message(timeout=0.1)
        except redis.exceptions.ConnectionError as exc:
            errors.append(exc)
            time.sleep(0.05)  # what a caller's loop does after an error
        durations.append(time.monotonic() - start)
    durations.append(-1.0 if publish_until_received(server, pubsub, channel, "back") else 99.0)
    pubsub.close()


@pytest.mark.slow
def test_get_message_honours_its_timeout_through_a_restart(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    client = guarded(server.url, connect_timeout="500ms")
    durations: list[list[float]] = [[] for _ in range(SUBSCRIBERS)]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_subscriber_through_restart,
            args=(server, client, f"ch{i}", durations[i], errors),
        )
        for i in range(SUBSCRIBERS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.restart(downtime=1.0)
    for thread in threads:
        thread.join(timeout=30)
    longest = max(max(d[:-1]) for d in durations)
    print(
        f"restart: {sum(map(len, durations))} reads, {len(errors)} errors, longest {longest:.3f}s"
    )
    assert all(d[-1] == -1.0 for d in durations), "a subscriber never got a message back"
    assert longest < 0.1 + GRACE
    assert errors, "the outage was hidden"
    assert all(isinstance(e, PoolguardError) for e in errors)


@pytest.mark.slow
def test_opt_in_reconnect_rides_a_restart_and_reports_the_gap(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    gaps: list[ResubscribeGap] = []
    client = guarded(
        server.url, connect_timeout="500ms", pubsub_reconnect=True, on_resubscribe=gaps.append
    )
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert confirmations(pubsub) == {("subscribe", b"news"): 1}
    restart = in_background(lambda: server.restart(downtime=1.0))
    longest = 0.0
    seen: Counter[tuple[str, bytes]] = Counter()
    while restart.is_alive() or not gaps:
        start = time.monotonic()
        message = pubsub.get_message(timeout=0.1)  # never raises: the outage is ridden out
        longest = max(longest, time.monotonic() - start)
        assert time.monotonic() - start < 0.1 + GRACE
        if message is not None:
            seen[message["type"], message["channel"]] += 1
    assert len(gaps) == 1
    assert gaps[0].channels == (b"news",)
    assert gaps[0].seconds > 0.5
    assert isinstance(gaps[0].error, redis.exceptions.ConnectionError)
    assert seen + confirmations(pubsub) == {("subscribe", b"news"): 1}
    assert publish_until_received(server, pubsub, "news", "2")["data"] == b"2"
    print(f"opt-in restart: gap {gaps[0].seconds:.2f}s, longest read {longest:.3f}s")
    pubsub.close()


def _reads_through_an_unreachable_server(proxy: Any, pubsub: Any) -> tuple[float, int]:
    """Drop the links, then make the server unreachable (the handshake is never answered):
    (longest get_message(timeout=0.1), errors) over 1.5 s of reads."""
    proxy.reset()
    proxy.clear()
    proxy.blackhole()
    longest, errors = 0.0, 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            pubsub.get_message(timeout=0.1)
        except redis.exceptions.ConnectionError:
            errors += 1
        longest = max(longest, time.monotonic() - start)
    proxy.clear()
    return longest, errors


def test_a_reconnect_to_an_unreachable_server_is_bounded_by_the_read(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url))  # connect timeout 2 s: the read is shorter
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    next_message(pubsub, timeout=0.3)
    longest, errors = _reads_through_an_unreachable_server(proxy, pubsub)
    print(f"unreachable: longest read {longest:.3f}s, {errors} errors")
    assert errors > 0
    assert longest < c.RECONNECT_FLOOR + GRACE
    assert publish_until_received(redis_server, pubsub, key, "back")["data"] == b"back"
    pubsub.close()


def test_a_subscribe_after_a_drop_reconnects_with_the_connect_timeout(
    redis_server: Any, fault_proxy: Any, guarded: Any, key: str
) -> None:
    """Only a read bounds its reconnect by its own timeout; the next read's bound must not
    leak into a later subscribe() (a slow but alive server: 0.4 s round trips)."""
    proxy = fault_proxy(redis_server)
    client = guarded(proxy.url(redis_server.url))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    next_message(pubsub, timeout=0.3)
    proxy.reset()
    assert isinstance(read_until_error(pubsub), redis.exceptions.ConnectionError)
    proxy.clear()
    proxy.latency(0.2)
    pubsub.subscribe(f"{key}:2")  # reconnects: several round trips, more than the read's 0.25 s
    proxy.clear()
    assert publish_until_received(redis_server, pubsub, f"{key}:2", "2")["data"] == b"2"
    assert publish_until_received(redis_server, pubsub, key, "1")["data"] == b"1"
    pubsub.close()


def test_opt_in_listen_keeps_listening_across_a_kill(
    redis_server: Any, guarded: Any, key: str
) -> None:
    gaps: list[ResubscribeGap] = []
    client = guarded(redis_server.url, client_name="pg-listen-optin")
    pubsub = client.pubsub(
        ignore_subscribe_messages=True, reconnect=True, on_resubscribe=gaps.append
    )
    pubsub.subscribe(key)
    received: list[Any] = []

    def listen() -> None:
        for message in pubsub.listen():
            received.append(message)
            if message["data"] == b"after":
                return

    listener = in_background(listen)
    time.sleep(0.2)
    assert kill_by_name(redis_server, "pg-listen-optin") >= 1
    with admin(redis_server) as publisher:
        end = time.monotonic() + WAIT
        while listener.is_alive() and time.monotonic() < end:
            publisher.publish(key, "after")
            time.sleep(0.05)
    assert not listener.is_alive()
    assert len(gaps) == 1
    pubsub.close()


def test_more_subscribers_than_the_old_pool_of_10_work_with_defaults(
    redis_server: Any, key: str
) -> None:
    client = poolguard.redis.from_url(redis_server.url)  # default pool
    pubsubs = [client.pubsub(ignore_subscribe_messages=True) for _ in range(12)]
    try:
        for pubsub in pubsubs:
            pubsub.subscribe(key)
        with admin(redis_server) as publisher:
            publisher.publish(key, "all")
        assert all(next_message(p)["data"] == b"all" for p in pubsubs)
    finally:
        for pubsub in pubsubs:
            pubsub.close()
        client.close()


def test_a_full_pool_says_how_to_raise_it(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, pool_size=1, acquire_timeout="100ms")
    holder = client.pubsub()
    holder.subscribe(key)
    with pytest.raises(PoolTimeout) as full:
        client.pubsub().subscribe(key)
    assert isinstance(full.value, redis.exceptions.ConnectionError)
    assert "pool_size=" in str(full.value)
    assert "POOLGUARD_REDIS_POOL_SIZE" in str(full.value)
    assert "pubsub()" in str(full.value)
    holder.close()


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


# -- asyncio ---------------------------------------------------------------------------------


async def async_next_message(pubsub: Any, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return message
    return None


async def async_publish_until_received(server: Any, pubsub: Any, channel: str, data: str) -> Any:
    end = time.monotonic() + WAIT  # see publish_until_received
    with admin(server) as publisher:
        while time.monotonic() < end:
            publisher.publish(channel, data)
            try:
                message = await async_next_message(pubsub, timeout=0.2)
            except redis.exceptions.ConnectionError:
                await asyncio.sleep(0.05)
                continue
            if message is not None:
                return message
    return None


async def async_read_until_error(pubsub: Any, reads: int = 20) -> BaseException | None:
    for _ in range(reads):
        try:
            await pubsub.get_message(timeout=0.1)
        except Exception as exc:
            return exc
    return None


async def async_confirmations(pubsub: Any, seconds: float = 0.5) -> Counter[tuple[str, bytes]]:
    seen: Counter[tuple[str, bytes]] = Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        message = await pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] in ("subscribe", "psubscribe"):
            seen[message["type"], message["channel"]] += 1
    return seen


async def test_async_a_killed_subscription_raises_then_resubscribes_exactly_once(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, client_name="pg-apubsub-kill")
    pubsub = client.pubsub()
    await pubsub.subscribe(key)
    await pubsub.psubscribe(f"{key}:*")
    expected = {("subscribe", key.encode()): 1, ("psubscribe", f"{key}:*".encode()): 1}
    assert await async_confirmations(pubsub) == expected
    assert kill_by_name(redis_server, "pg-apubsub-kill") >= 1
    lost = await async_read_until_error(pubsub)
    assert isinstance(lost, redis.exceptions.ConnectionError)
    assert isinstance(lost, PoolguardError)
    assert await async_confirmations(pubsub) == expected
    message = await async_publish_until_received(redis_server, pubsub, key, "after")
    assert message["data"] == b"after"
    assert poolguard.redis.stats(client)["resubscribes"] == 1
    await pubsub.aclose()


async def test_async_a_reconnect_to_an_unreachable_server_is_bounded_by_the_read(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(key)
    await async_next_message(pubsub, timeout=0.3)
    proxy.reset()
    proxy.clear()
    proxy.blackhole()
    longest, errors = 0.0, 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            await pubsub.get_message(timeout=0.1)
        except redis.exceptions.ConnectionError:
            errors += 1
        longest = max(longest, time.monotonic() - start)
    proxy.clear()
    assert errors > 0
    assert longest < c.RECONNECT_FLOOR + GRACE
    message = await async_publish_until_received(redis_server, pubsub, key, "back")
    assert message["data"] == b"back"
    await pubsub.aclose()


async def test_async_a_subscribe_after_a_drop_reconnects_with_the_connect_timeout(
    redis_server: Any, fault_proxy: Any, aguarded: Any, key: str
) -> None:
    proxy = fault_proxy(redis_server)
    client = aguarded(proxy.url(redis_server.url))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(key)
    await async_next_message(pubsub, timeout=0.3)
    proxy.reset()
    assert isinstance(await async_read_until_error(pubsub), redis.exceptions.ConnectionError)
    proxy.clear()
    proxy.latency(0.2)
    await pubsub.subscribe(f"{key}:2")
    proxy.clear()
    message = await async_publish_until_received(redis_server, pubsub, f"{key}:2", "2")
    assert message["data"] == b"2"
    await pubsub.aclose()


async def test_async_listen_raises_when_the_subscription_is_killed(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, client_name="pg-alisten-kill")
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(key)

    async def listen() -> Any:
        async for message in pubsub.listen():
            return message
        return None

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    assert kill_by_name(redis_server, "pg-alisten-kill") >= 1
    with pytest.raises(redis.exceptions.ConnectionError):
        await asyncio.wait_for(task, WAIT)
    await pubsub.aclose()


async def _async_subscriber_through_restart(
    server: Any, client: Any, channel: str, errors: list[BaseException]
) -> tuple[float, bool]:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    await async_next_message(pubsub, timeout=0.3)
    longest = 0.0
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            await pubsub.get_message(timeout=0.1)
        except redis.exceptions.ConnectionError as exc:
            errors.append(exc)
            await asyncio.sleep(0.05)
        longest = max(longest, time.monotonic() - start)
    back = await async_publish_until_received(server, pubsub, channel, "back") is not None
    await pubsub.aclose()
    return longest, back


@pytest.mark.slow
async def test_async_get_message_honours_its_timeout_through_a_restart(
    dedicated_server: Any, aguarded: Any
) -> None:
    server = dedicated_server("redis")
    client = aguarded(server.url, connect_timeout="500ms")
    errors: list[BaseException] = []
    subscribers = [
        asyncio.create_task(_async_subscriber_through_restart(server, client, f"c{i}", errors))
        for i in range(SUBSCRIBERS)
    ]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.restart, downtime=1.0)
    results = await asyncio.gather(*subscribers)
    longest = max(r[0] for r in results)
    print(f"async restart: {len(errors)} errors, longest read {longest:.3f}s")
    assert all(back for _, back in results)
    assert longest < 0.1 + GRACE
    assert errors, "the outage was hidden"
    assert all(isinstance(e, PoolguardError) for e in errors)


@pytest.mark.slow
async def test_async_opt_in_reconnect_rides_a_restart_and_reports_the_gap(
    dedicated_server: Any, aguarded: Any
) -> None:
    server = dedicated_server("redis")
    gaps: list[ResubscribeGap] = []
    client = aguarded(
        server.url, connect_timeout="500ms", pubsub_reconnect=True, on_resubscribe=gaps.append
    )
    pubsub = client.pubsub()
    await pubsub.subscribe("news")
    assert await async_confirmations(pubsub) == {("subscribe", b"news"): 1}
    restart = in_background(lambda: server.restart(downtime=1.0))
    seen: Counter[tuple[str, bytes]] = Counter()
    while restart.is_alive() or not gaps:
        start = time.monotonic()
        message = await pubsub.get_message(timeout=0.1)
        assert time.monotonic() - start < 0.1 + GRACE
        if message is not None:
            seen[message["type"], message["channel"]] += 1
    assert len(gaps) == 1
    assert gaps[0].channels == (b"news",)
    assert seen + await async_confirmations(pubsub) == {("subscribe", b"news"): 1}
    message = await async_publish_until_received(server, pubsub, "news", "2")
    assert message["data"] == b"2"
    await pubsub.aclose()


async def test_async_more_subscribers_than_the_old_pool_of_10_work_with_defaults(
    redis_server: Any, key: str
) -> None:
    client = poolguard.redis.async_from_url(redis_server.url)
    pubsubs = [client.pubsub(ignore_subscribe_messages=True) for _ in range(12)]
    try:
        for pubsub in pubsubs:
            await pubsub.subscribe(key)
        with admin(redis_server) as publisher:
            publisher.publish(key, "all")
        for pubsub in pubsubs:
            assert (await async_next_message(pubsub))["data"] == b"all"
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()
        await client.aclose()
