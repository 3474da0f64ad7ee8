"""Fixtures for the Redis integration tests: guarded clients on real servers, cleaned up."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

import poolguard.redis

#: Fast retries for tests: a restart's downtime is covered by attempts, not by long sleeps. The
#: breaker and the retry budget stay at the library's defaults, as users run them.
FAST_RETRIES: dict[str, Any] = {
    "retry_attempts": 40,
    "retry_backoff_initial": "10ms",
    "retry_backoff_max": "100ms",
    "retry_timeout": "15s",
}


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return f"pg-test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def guarded() -> Iterator[Callable[..., redis.Redis]]:
    """Factory: ``guarded(url, **overrides)`` -> a poolguard sync client, closed at teardown."""
    clients: list[redis.Redis] = []

    def make(url: str, **overrides: Any) -> redis.Redis:
        client = poolguard.redis.from_url(url, **{**FAST_RETRIES, **overrides})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
async def aguarded() -> AsyncIterator[Callable[..., redis.asyncio.Redis]]:
    """Factory: ``aguarded(url, **overrides)`` -> a poolguard asyncio client, closed at teardown."""
    clients: list[redis.asyncio.Redis] = []

    def make(url: str, **overrides: Any) -> redis.asyncio.Redis:
        client = poolguard.redis.async_from_url(url, **{**FAST_RETRIES, **overrides})
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
