"""Fixtures for the MySQL/MariaDB integration tests: guarded engines that clean up after
themselves, and helpers to find and KILL exactly this test's server sessions.

MariaDB has no client-chosen ``application_name``, so tests kill by ``CONNECTION_ID()``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

import poolguard

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
def make_engine() -> Iterator[EngineFactory]:
    """``make_engine(url, **overrides)``: a poolguard Engine, disposed at teardown."""
    engines: list[Engine] = []

    def make(url: str, **overrides: Any) -> Engine:
        engine = poolguard.create_engine(url, **{**FAST, **overrides})
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
async def make_async_engine() -> AsyncIterator[AsyncEngineFactory]:
    engines: list[AsyncEngine] = []

    def make(url: str, **overrides: Any) -> AsyncEngine:
        engine = poolguard.create_async_engine(url, **{**FAST, **overrides})
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)


def connection_id(conn: Any) -> int:
    return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar())


def kill(server: Any, *ids: int) -> None:
    """``KILL CONNECTION`` each id, as root over the server's Unix socket."""
    server.sql("".join(f"KILL CONNECTION {int(i)};" for i in ids))


def kill_later(server: Any, thread_id: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: kill(server, thread_id))
    timer.start()
    return timer
