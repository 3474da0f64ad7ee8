"""``poolguard.reconfigure(target, keepalive=...)`` takes effect at once, against real servers.

For each kind of pool (SQLAlchemy engine, native psycopg pool, Redis client; sync and asyncio):
its connections are opened and returned with a long keepalive interval (watched, next ping an
hour away), then ``keepalive`` is reconfigured to a short interval: the keepalive thread pings an
idle connection (``stats()["keepalive_pings"]``) without any new connection being opened. Turned
off, the pool leaves the watch at the call. Turned on from off, the pool is watched at the call.

No wall-clock bounds: each wait is for a condition, with a generous bound that only turns a
hang into a failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

import poolguard
import poolguard.postgres
import poolguard.redis
from poolguard.core import keepalive

pytestmark = [pytest.mark.slow]

HANG_GUARD = 30.0
LONG = 3600.0
SHORT = 0.1
#: Checkout layers off: nothing but keepalive touches an idle connection.
BARE: dict[str, Any] = {"validate_idle": None, "max_idle": None}


def until(predicate: Callable[[], bool], what: str) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never happened"
        time.sleep(0.02)


async def auntil(predicate: Callable[[], bool], what: str) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never happened"
        await asyncio.sleep(0.02)  # the loop must run: an asyncio pool's sweep is a task on it


def _pings(target: Any) -> int:
    return int(poolguard.stats(target)["keepalive_pings"])


def _check_live(target: Any, pool: Any, connects: Callable[[], int]) -> None:
    """The sync scenario, once the pool has idle connections and ``keepalive=LONG``."""
    assert keepalive.is_watched(pool)
    assert _pings(target) == 0
    opened = connects()
    assert poolguard.reconfigure(target, keepalive=SHORT) == {"keepalive": (LONG, SHORT)}
    until(lambda: _pings(target) > 0, "a keepalive ping after the reconfiguration")
    assert connects() == opened  # no new connection was needed for it
    poolguard.reconfigure(target, keepalive="off")
    assert not keepalive.is_watched(pool)  # at the call, not at the next due time
    poolguard.reconfigure(target, keepalive=SHORT)
    assert keepalive.is_watched(pool)  # at the call, not at the next connect
    pings = _pings(target)
    until(lambda: _pings(target) > pings, "a ping after keepalive was turned on again")


async def _acheck_live(target: Any, pool: Any, connects: Callable[[], int]) -> None:
    assert keepalive.is_watched(pool)
    assert _pings(target) == 0
    opened = connects()
    assert poolguard.reconfigure(target, keepalive=SHORT) == {"keepalive": (LONG, SHORT)}
    await auntil(lambda: _pings(target) > 0, "a keepalive ping after the reconfiguration")
    assert connects() == opened
    poolguard.reconfigure(target, keepalive="off")
    assert not keepalive.is_watched(pool)
    poolguard.reconfigure(target, keepalive=SHORT)
    assert keepalive.is_watched(pool)
    pings = _pings(target)
    await auntil(lambda: _pings(target) > pings, "a ping after keepalive was turned on again")


@pytest.mark.postgres
def test_sqlalchemy_engine(postgres_server: Any) -> None:
    engine = poolguard.create_engine(postgres_server.url, pool_size=2, keepalive=LONG, **BARE)
    try:
        with engine.connect() as a, engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
        _check_live(engine, engine.pool, lambda: int(poolguard.stats(engine)["connects"]))
    finally:
        engine.dispose()
    assert not keepalive.is_watched(engine.pool)


@pytest.mark.postgres
async def test_sqlalchemy_async_engine(postgres_server: Any) -> None:
    engine = poolguard.create_async_engine(postgres_server.url, pool_size=2, keepalive=LONG, **BARE)
    try:
        async with engine.connect() as a, engine.connect() as b:
            await a.execute(text("SELECT 1"))
            await b.execute(text("SELECT 1"))
        pool = engine.sync_engine.pool
        await _acheck_live(engine, pool, lambda: int(poolguard.stats(engine)["connects"]))
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_sqlalchemy_engine_turned_on_from_off(postgres_server: Any) -> None:
    engine = poolguard.create_engine(postgres_server.url, pool_size=1, **BARE)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert not keepalive.is_watched(engine.pool)
        poolguard.reconfigure(engine, keepalive=SHORT)
        assert keepalive.is_watched(engine.pool)
        until(lambda: _pings(engine) > 0, "a ping of the idle connection")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_native_pool(postgres_server: Any) -> None:
    pool = poolguard.postgres.create_pool(postgres_server.url, pool_size=2, keepalive=LONG, **BARE)
    try:
        pool.wait(timeout=10)
        _check_live(pool, pool, lambda: int(pool.get_stats().get("connections_num", 0)))
    finally:
        pool.close()
    assert not keepalive.is_watched(pool)


@pytest.mark.postgres
async def test_native_async_pool(postgres_server: Any) -> None:
    pool = poolguard.postgres.create_async_pool(
        postgres_server.url, pool_size=2, keepalive=LONG, **BARE
    )
    await pool.open(wait=True, timeout=10)
    try:
        await _acheck_live(pool, pool, lambda: int(pool.get_stats().get("connections_num", 0)))
    finally:
        await pool.close()
    assert not keepalive.is_watched(pool)


@pytest.mark.redis
def test_redis_client(redis_server: Any) -> None:
    client = poolguard.redis.from_url(redis_server.url, keepalive=LONG, **BARE)
    try:
        with client.pipeline(transaction=False) as pipe:  # one connection, then idle
            pipe.ping().execute()
        pool = client.connection_pool
        _check_live(client, pool, lambda: len(pool._connections))
    finally:
        client.close()


@pytest.mark.redis
async def test_redis_async_client(redis_server: Any) -> None:
    client = poolguard.redis.async_from_url(redis_server.url, keepalive=LONG, **BARE)
    try:
        assert await client.ping()
        pool = client.connection_pool

        def connects() -> int:
            return len(pool._available_connections) + len(pool._in_use_connections)

        await _acheck_live(client, pool, connects)
    finally:
        await client.aclose()
