"""Drop-in fidelity with redis-py's from_url on a real server: the URL's db wins, compatible retry
options and set_retry are accepted without weakening the retry rule, and with the default
settings a server that is down is reported quickly while a 1 s restart still costs no error."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis_helpers import admin, stall

import poolguard.redis
from poolguard.errors import AmbiguousResultError

pytestmark = pytest.mark.redis

#: Generous: the box is shared. Before this change a read against a stopped server took 8-9 s.
GRACE = 1.5
CALLERS = 4


def test_the_urls_db_wins_over_the_keyword_like_redis_py(redis_server: Any, key: str) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/0"
    with poolguard.redis.from_url(url, db=1) as ours, redis.Redis.from_url(url, db=1) as theirs:
        ours.set(key, "ours")
        theirs.set(f"{key}:theirs", "theirs")
    with redis.Redis.from_url(url) as db0:
        assert db0.get(key) == b"ours"
        assert db0.get(f"{key}:theirs") == b"theirs"
        db0.delete(key, f"{key}:theirs")


def test_compatible_retry_options_keep_the_retry_rule(
    redis_server: Any, guarded: Any, key: str
) -> None:
    client = guarded(
        redis_server.url,
        query_timeout="100ms",
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        retry_on_error=[],
    )
    client.set(key, 0)
    client.set_retry(Retry(ExponentialBackoff(), 0))
    sleeper = stall(redis_server, 0.5)
    time.sleep(0.05)
    with pytest.raises(AmbiguousResultError):
        client.incr(key)  # its reply times out: never re-sent
    sleeper.join()
    assert int(admin(redis_server).get(key)) == 1
    assert client.get(key) == b"1"


async def test_async_set_retry_accepts_the_retry_in_place(
    redis_server: Any, aguarded: Any, key: str
) -> None:
    client = aguarded(redis_server.url)
    await client.set(key, "v")
    retry = Retry(NoBackoff(), 0)
    client.set_retry(retry)
    assert client.get_retry() is retry
    assert await client.get(key) == b"v"


def _timed_failures(call: Any) -> list[tuple[float, BaseException | None]]:
    """Run ``call`` from several threads at once: (seconds, error) of each."""
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.monotonic()
        error: BaseException | None = None
        try:
            call()
        except Exception as exc:
            error = exc
        with lock:
            results.append((time.monotonic() - start, error))

    threads = [threading.Thread(target=one) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.chaos
def test_a_server_that_never_answered_fails_at_once(dedicated_server: Any) -> None:
    server = dedicated_server("redis")
    url = server.url
    server.stop()
    client = poolguard.redis.from_url(url)  # the defaults, breaker on
    try:
        results = _timed_failures(lambda: client.get("k"))
    finally:
        client.close()
    print("never answered:", [f"{s:.3f}s" for s, _ in results])
    assert all(isinstance(e, redis.exceptions.ConnectionError) for _, e in results)
    # Says why it was not retried (a breaker rejection, once 5 callers failed, says so too).
    assert any("has not answered once" in str(e) for _, e in results)
    assert max(s for s, _ in results) < GRACE


@pytest.mark.chaos
@pytest.mark.slow
def test_a_server_that_went_down_is_reported_within_the_retry_window(
    dedicated_server: Any,
) -> None:
    server = dedicated_server("redis")
    client = poolguard.redis.from_url(server.url)  # the defaults: RETRY_TIMEOUT 3 s
    try:
        client.set("k", "v")
        server.stop()
        first = _timed_failures(lambda: client.get("k"))
        later = _timed_failures(lambda: client.get("k"))
    finally:
        client.close()
    print("went down:", [f"{s:.2f}s" for s, _ in first], [f"{s:.2f}s" for s, _ in later])
    for _, error in first + later:
        assert isinstance(error, redis.exceptions.ConnectionError)
    window = poolguard.redis.settings_for(server.url).retry_timeout
    assert max(s for s, _ in first + later) < window + GRACE


@pytest.mark.chaos
@pytest.mark.slow
def test_gets_ride_a_1s_restart_with_the_default_settings(dedicated_server: Any) -> None:
    server = dedicated_server("redis")
    client = poolguard.redis.from_url(server.url)  # breaker and retry window at their defaults
    errors: list[BaseException] = []
    answers = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                client.get("k")
                answers[0] += 1
            except redis.exceptions.RedisError as exc:
                errors.append(exc)
            time.sleep(0.01)

    try:
        client.set("k", "v")
        threads = [threading.Thread(target=reader) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        server.restart(downtime=1.0)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        stop.set()
        client.close()
    print(f"defaults, 1 s restart: {answers[0]} GETs, {len(errors)} errors")
    assert errors == []


@pytest.mark.chaos
@pytest.mark.slow
async def test_async_gets_ride_a_1s_restart_with_the_default_settings(
    dedicated_server: Any,
) -> None:
    server = dedicated_server("redis")
    client = poolguard.redis.async_from_url(server.url)
    errors: list[BaseException] = []
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            try:
                await client.get("k")
            except redis.exceptions.RedisError as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)

    try:
        await client.set("k", "v")
        readers = [asyncio.create_task(reader()) for _ in range(CALLERS)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(server.restart, downtime=1.0)
        await asyncio.sleep(0.5)
        done.set()
        await asyncio.gather(*readers)
    finally:
        done.set()
        await client.aclose()
    assert errors == []


async def test_async_a_server_that_never_answered_fails_at_once(dedicated_server: Any) -> None:
    server = dedicated_server("redis")
    url = server.url
    server.stop()
    client = poolguard.redis.async_from_url(url)
    try:
        start = time.monotonic()
        outcomes = await asyncio.gather(
            *(client.get("k") for _ in range(CALLERS)), return_exceptions=True
        )
        elapsed = time.monotonic() - start
    finally:
        await client.aclose()
    assert all(isinstance(o, redis.exceptions.ConnectionError) for o in outcomes)
    assert elapsed < GRACE
