"""The anchor: one INCR whose reply times out (server stalled by DEBUG SLEEP) is applied once.

redis-py 8's ``redis.Redis(host=...)`` retries every command on TimeoutError, so the stalled
INCR is sent again and the counter ends at 2. poolguard's client either returns the value or
raises AmbiguousResultError (which is also a redis TimeoutError), and the counter ends at 1.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis_helpers import admin, stall

import poolguard
import poolguard.redis
from poolguard.errors import AmbiguousResultError

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

STALL = 0.5
SOCKET_TIMEOUT = 0.1


def settle(thread: Any) -> None:
    thread.join(timeout=10)
    time.sleep(0.05)


def test_anchor_plain_redis_py_applies_a_stalled_incr_twice(redis_server: Any, key: str) -> None:
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, socket_timeout=SOCKET_TIMEOUT
    )
    try:
        client.ping()
        thread = stall(redis_server, STALL)
        time.sleep(0.05)
        try:
            outcome: Any = client.incr(key)
        except redis.exceptions.RedisError as exc:
            outcome = exc
        settle(thread)
        applied = int(admin(redis_server).get(key) or 0)
    finally:
        client.close()
    print(f"anchor: redis.Redis(host=...) INCR, {STALL}s stall -> {outcome!r}, counter={applied}")
    # The fact about the anchor (redis-py 8.1's default Retry on TimeoutError), measured here.
    assert applied == 2


@pytest.mark.parametrize("marked", [False, True], ids=["table", "caller-vouched"])
def test_guarded_incr_under_stall_is_applied_at_most_once(
    redis_server: Any, guarded: Any, key: str, marked: bool
) -> None:
    client = guarded(redis_server.url, query_timeout=f"{int(SOCKET_TIMEOUT * 1000)}ms")
    client.ping()
    thread = stall(redis_server, STALL)
    time.sleep(0.05)
    outcome: Any
    try:
        if marked:
            with poolguard.redis.not_idempotent():
                outcome = client.incr(key)
        else:
            outcome = client.incr(key)
    except AmbiguousResultError as exc:
        outcome = exc
    settle(thread)
    applied = int(admin(redis_server).get(key))
    print(f"poolguard INCR under a {STALL}s stall -> {outcome!r}, counter={applied}")
    assert applied == 1
    if isinstance(outcome, Exception):
        assert isinstance(outcome, redis.exceptions.TimeoutError)  # drop-in
        assert "may have been applied" in str(outcome)
        assert poolguard.redis.stats(client)["ambiguous"] == 1
    else:
        assert outcome == 1


def test_guarded_get_under_stall_is_retried_and_answers(
    redis_server: Any, guarded: Any, key: str
) -> None:
    admin(redis_server).set(key, "v")
    client = guarded(redis_server.url, query_timeout="100ms")
    client.ping()
    thread = stall(redis_server, STALL)
    time.sleep(0.05)
    assert client.get(key) == b"v"
    settle(thread)
    stats = poolguard.redis.stats(client)
    assert stats["retries"] >= 1
    assert stats["retries_by_reason"].get("read_timeout", 0) >= 1


def test_a_deadline_bounds_a_stalled_get(redis_server: Any, guarded: Any, key: str) -> None:
    client = guarded(redis_server.url, query_timeout="5s")
    client.ping()
    thread = stall(redis_server, 1.0)
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError), poolguard.deadline(0.2):
        client.get(key)
    assert time.monotonic() - started < 0.2 + 1.5  # deadline + grace, never the 5 s timeout
    settle(thread)


async def test_async_guarded_incr_under_stall_is_applied_at_most_once(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url, query_timeout="100ms")
    await client.ping()
    thread = stall(redis_server, STALL)
    time.sleep(0.05)
    outcome: Any
    try:
        outcome = await client.incr(key)
    except AmbiguousResultError as exc:
        outcome = exc
    settle(thread)
    applied = int(admin(redis_server).get(key))
    print(f"poolguard asyncio INCR under a {STALL}s stall -> {outcome!r}, counter={applied}")
    assert applied == 1
    if isinstance(outcome, Exception):
        assert isinstance(outcome, redis.exceptions.TimeoutError)
    else:
        assert outcome == 1


async def test_async_guarded_get_under_stall_is_retried(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    admin(redis_server).set(key, "v")
    client = aguarded(redis_server.url, query_timeout="100ms")
    await client.ping()
    thread = stall(redis_server, STALL)
    time.sleep(0.05)
    assert await client.get(key) == b"v"
    settle(thread)
    assert poolguard.redis.stats(client)["retries"] >= 1


async def test_async_anchor_for_comparison(redis_server: Any, key: str) -> None:
    client = redis.asyncio.Redis(
        host=redis_server.host, port=redis_server.port, socket_timeout=SOCKET_TIMEOUT
    )
    try:
        await client.ping()
        thread = stall(redis_server, STALL)
        time.sleep(0.05)
        try:
            outcome: Any = await client.incr(key)
        except redis.exceptions.RedisError as exc:
            outcome = exc
        settle(thread)
    finally:
        await client.aclose()
    applied = int(admin(redis_server).get(key) or 0)
    print(f"anchor (asyncio): INCR under a {STALL}s stall -> {outcome!r}, counter={applied}")
