"""Guarded-engine factories shared by the SQL integration suites (PostgreSQL, MySQL).

A suite adds driver ``connect_args`` to every engine it makes by overriding the
``engine_connect_args`` fixture (PostgreSQL tags its sessions with a per-test
``application_name`` that way, so kills hit only that test's sessions).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
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
def async_engine_options() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The last word on an async engine's options (the PostgreSQL suite picks the driver)."""
    return dict


@pytest.fixture
async def make_async_engine(
    engine_connect_args: dict[str, Any],
    async_engine_options: Callable[[dict[str, Any]], dict[str, Any]],
) -> AsyncIterator[AsyncEngineFactory]:
    engines: list[AsyncEngine] = []

    def make(url: str, **overrides: Any) -> AsyncEngine:
        options = async_engine_options(_options(engine_connect_args, overrides))
        engine = poolguard.create_async_engine(url, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)


# --- fair hand-off (postgres/ and mysql/ test_pool_fairness.py) ---------------------------------

#: Only to fail instead of hanging, never a performance bound.
FAIRNESS_HANG_GUARD = 20.0


def _until(predicate: Callable[[], bool]) -> None:
    stop = time.monotonic() + FAIRNESS_HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, "condition never became true"
        time.sleep(0.001)


def _serve_in_turn(engine: Any, names: list[str], rounds: int) -> list[str]:
    """Threads named ``names`` each check out ``rounds`` times from a one-connection pool; each
    holder waits until every other unfinished thread is queued (the pool's ``waiting`` gauge),
    returns the connection and asks again at once. Returns who was served, in order: a fair
    pool goes round (``a b c a b c ...``); SQLAlchemy's queue let the returning thread take the
    connection back (``a a a ...``)."""
    served: list[str] = []
    grants = dict.fromkeys(names, 0)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def queued(n: int) -> bool:
        return int(poolguard.stats(engine)["waiting"]) >= n

    def worker(name: str) -> None:
        try:
            for _ in range(rounds):
                with engine.connect() as conn:
                    with lock:
                        served.append(name)
                        grants[name] += 1
                        others = sum(1 for n in names if n != name and grants[n] < rounds)
                    _until(functools.partial(queued, others))
                    conn.execute(text("SELECT 1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(FAIRNESS_HANG_GUARD * rounds)
    assert errors == []
    return served


@pytest.fixture
def serve_in_turn() -> Callable[[Any, list[str], int], list[str]]:
    return _serve_in_turn


async def _serve_in_request_order(
    engine: Any, tasks: int = 200, rounds: int = 3
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``tasks`` tasks each check out ``rounds`` times (asking again at once after a return)
    from an async engine whose pool is warmed first; returns (requests, grants), each a list
    of (task, round) in the order asked and served: a fair pool serves them in the same order."""
    warm = [await engine.connect() for _ in range(engine.pool.size())]  # all open, all idle
    for conn in warm:
        await conn.close()
    requests: list[tuple[int, int]] = []
    grants: list[tuple[int, int]] = []

    async def worker(i: int) -> None:
        for r in range(rounds):
            requests.append((i, r))
            async with engine.connect() as conn:
                grants.append((i, r))
                await conn.execute(text("SELECT 1"))

    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return requests, grants


@pytest.fixture
def serve_in_request_order() -> Callable[..., Any]:
    return _serve_in_request_order
