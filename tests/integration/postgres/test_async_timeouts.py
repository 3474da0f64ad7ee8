"""Timeouts, validation and eviction of async engines, for both drivers (psycopg, asyncpg).

The server-side timeouts arrive through each driver's own startup channel (libpq ``options`` /
asyncpg ``server_settings``); the client backstop cuts the socket when the server cannot answer;
the pool validates only connections idle past the window and retires them at their lifetime.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres]

GRACE = 0.5


@both_async_drivers
async def test_server_timeouts_are_set_and_a_statement_timeout_is_a_query_timeout(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(
        postgres_server.url, query_timeout=0.3, lock_timeout=0.2, idle_in_transaction_timeout=5
    )
    async with engine.connect() as conn:
        shown = [
            (await conn.execute(text(f"SHOW {name}"))).scalar()
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        ]
        assert shown == ["300ms", "200ms", "5s"]
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout) as info:
            await conn.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 0.3 + GRACE  # the server's, before the backstop
        assert isinstance(info.value, sqlalchemy.exc.OperationalError)
        await conn.rollback()
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1  # the connection serves on
    assert poolguard.stats(engine)["evictions"]["timeout"] == 0


@both_async_drivers
async def test_freeze_without_a_deadline_is_bounded_by_the_query_timeout(
    dedicated_server: Any, make_async_engine: Any
) -> None:
    server = dedicated_server("postgres")
    engine = make_async_engine(server.url, query_timeout=0.5)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(poolguard.QueryTimeout):
                await conn.execute(text("SELECT 1"))
            elapsed = time.monotonic() - started
        finally:
            server.thaw()
    # statement_timeout cannot fire on a frozen server: the client backstop did (0.5 + 0.5)
    assert elapsed < 0.5 + 0.5 + GRACE, elapsed
    assert poolguard.stats(engine)["evictions"]["timeout"] == 1
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2


async def _pid(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar())


@both_async_drivers
async def test_validation_window_lifetime_and_a_connection_killed_while_idle(
    make_async_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_async_engine(postgres_server.url, pool_size=1, validate_idle=0.2)
    first = await _pid(engine)
    assert await _pid(engine) == first  # reused at once: not validated (inside the window)
    assert poolguard.stats(engine)["validations"] == 0
    await asyncio.sleep(0.3)
    assert await _pid(engine) == first  # idle past the window: validated, still alive
    assert poolguard.stats(engine)["validations"] == 1
    postgres_server.kill_connections(application_name=app_name)
    await asyncio.sleep(0.3)
    second = await _pid(engine)  # killed while idle: replaced at checkout, no error
    assert second != first
    snap = poolguard.stats(engine)
    assert snap["give_ups"] == 0
    assert snap["evictions"]["disconnect"] + snap["evictions"]["validation"] >= 1

    short = make_async_engine(postgres_server.url, pool_size=1, max_lifetime=0.3)
    first = await _pid(short)
    await asyncio.sleep(0.35)
    assert await _pid(short) != first  # retired at its (jittered) lifetime
    assert poolguard.stats(short)["evictions"]["lifetime"] == 1


@both_async_drivers
async def test_evicting_or_disposing_into_a_blackhole_keeps_the_deadline(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    # Closing a connection must not wait on a network that swallows everything: asyncpg's
    # close() waits for the server to hang up (SQLAlchemy: up to 2 s when invalidating, without
    # limit when closing an overflow connection or disposing).
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(
        proxy.url(postgres_server.url), pool_size=1, max_lifetime=0.3, connect_timeout=0.5
    )
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await asyncio.sleep(0.35)
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(poolguard.ConnectTimeout):  # evicted (lifetime), then no reconnect
        async with poolguard.deadline(1.0), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert time.monotonic() - started < 1.0 + GRACE
    assert poolguard.stats(engine)["evictions"]["lifetime"] == 1
    proxy.clear()
    async with engine.connect() as conn:  # an idle connection in the pool again
        await conn.execute(text("SELECT 1"))
    proxy.blackhole()
    started = time.monotonic()
    await asyncio.wait_for(engine.dispose(), 10)  # only to fail instead of hanging
    assert time.monotonic() - started < GRACE
    proxy.clear()
