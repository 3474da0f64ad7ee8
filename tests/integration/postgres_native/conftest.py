"""Fixtures for the native-pool tests: guarded psycopg_pool pools that close after the test.

Each test tags its connections with a unique ``application_name`` so that
``server.kill_connections(application_name=...)`` only hits that test's sessions.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import poolguard
import poolguard.postgres
from poolguard.postgres import GuardedAsyncConnectionPool, GuardedConnectionPool

_ids = itertools.count(1)

#: Defaults that keep fault tests fast: short timeouts and backoff. The breaker and the retry
#: budget stay at the library's defaults, as users run them (see tests/integration/conftest.py).
FAST: dict[str, Any] = {
    "pool_size": 2,
    "max_overflow": 2,
    "connect_timeout": 1.0,
    "acquire_timeout": 3.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
}

PoolFactory = Callable[..., GuardedConnectionPool]
AsyncPoolFactory = Callable[..., Awaitable[GuardedAsyncConnectionPool]]


@pytest.fixture
def app_name() -> str:
    return f"pgnative_{os.getpid()}_{next(_ids)}"


def _options(app_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    options = {**FAST, **overrides}
    kwargs = dict(options.pop("kwargs", {}))
    kwargs.setdefault("application_name", app_name)
    options["kwargs"] = kwargs
    return options


@pytest.fixture
def make_pool(app_name: str) -> Iterator[PoolFactory]:
    """``make_pool(url, wait=True, **overrides)``: an open pool, closed at teardown."""
    pools: list[GuardedConnectionPool] = []

    def make(url: str, *, wait: bool = True, **overrides: Any) -> GuardedConnectionPool:
        pool = poolguard.postgres.create_pool(url, **_options(app_name, overrides))
        pools.append(pool)
        if wait:
            pool.wait(timeout=10)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
async def make_async_pool(app_name: str) -> AsyncIterator[AsyncPoolFactory]:
    pools: list[GuardedAsyncConnectionPool] = []

    async def make(url: str, *, wait: bool = True, **overrides: Any) -> GuardedAsyncConnectionPool:
        pool = poolguard.postgres.create_async_pool(url, **_options(app_name, overrides))
        pools.append(pool)
        await pool.open(wait=wait, timeout=10)
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)
