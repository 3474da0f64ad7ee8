"""Fixtures for the PostgreSQL integration tests: guarded engines that clean up after themselves.

Each test tags its connections with a unique ``application_name`` so that
``server.kill_connections(application_name=...)`` only ever hits that test's sessions on the
shared server.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import poolguard

_ids = itertools.count(1)

#: Defaults that keep fault tests fast: short timeouts, more attempts, no breaker surprises.
FAST: dict[str, Any] = {
    "connect_timeout": 1.0,
    "acquire_timeout": 2.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
    "breaker_failures": None,
    "retry_budget": None,
}

EngineFactory = Callable[..., Engine]
AsyncEngineFactory = Callable[..., AsyncEngine]


@pytest.fixture
def app_name() -> str:
    return f"pgtest_{os.getpid()}_{next(_ids)}"


@pytest.fixture
def make_engine(app_name: str) -> Iterator[EngineFactory]:
    """``make_engine(url, **overrides)``: a poolguard Engine, disposed at teardown."""
    engines: list[Engine] = []

    def make(url: str, **overrides: Any) -> Engine:
        options = {**FAST, **overrides}
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.setdefault("application_name", app_name)
        engine = poolguard.create_engine(url, connect_args=connect_args, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
async def make_async_engine(app_name: str) -> AsyncIterator[AsyncEngineFactory]:
    engines: list[AsyncEngine] = []

    def make(url: str, **overrides: Any) -> AsyncEngine:
        options = {**FAST, **overrides}
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.setdefault("application_name", app_name)
        engine = poolguard.create_async_engine(url, connect_args=connect_args, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)
