"""Guarded-engine factories shared by the SQL integration suites (PostgreSQL, MySQL).

A suite adds driver ``connect_args`` to every engine it makes by overriding the
``engine_connect_args`` fixture (PostgreSQL tags its sessions with a per-test
``application_name`` that way, so kills hit only that test's sessions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import poolguard

#: Defaults that keep fault tests fast: short timeouts and backoff. The circuit breaker and the
#: retry budget stay at the library's defaults, as users run them: the half-open probe meets
#: units of work and concurrent callers only when it is on (a test that needs them off says so).
FAST: dict[str, Any] = {
    "connect_timeout": 1.0,
    "acquire_timeout": 2.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
}

EngineFactory = Callable[..., Engine]
AsyncEngineFactory = Callable[..., AsyncEngine]


@pytest.fixture
def engine_connect_args() -> dict[str, Any]:
    """Driver connect_args every engine of the suite gets (a test's own ones win)."""
    return {}


def _options(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    options = {**FAST, **overrides}
    options["connect_args"] = {**defaults, **options.get("connect_args", {})}
    return options


@pytest.fixture
def make_engine(engine_connect_args: dict[str, Any]) -> Iterator[EngineFactory]:
    """``make_engine(url, **overrides)``: a poolguard Engine, disposed at teardown."""
    engines: list[Engine] = []

    def make(url: str, **overrides: Any) -> Engine:
        engine = poolguard.create_engine(url, **_options(engine_connect_args, overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
async def make_async_engine(
    engine_connect_args: dict[str, Any],
) -> AsyncIterator[AsyncEngineFactory]:
    engines: list[AsyncEngine] = []

    def make(url: str, **overrides: Any) -> AsyncEngine:
        engine = poolguard.create_async_engine(url, **_options(engine_connect_args, overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)
