"""Whole-server faults on a dedicated PostgreSQL: restart with downtime, SIGSTOP freeze."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard
from poolguard.testing import stream_during

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

#: "No call outlives its deadline by more than a small grace" (DESIGN "Testing").
GRACE = 0.5
DOWNTIME = 1.5


def test_restart_with_downtime_surfaces_no_error(dedicated_server: Any, make_engine: Any) -> None:
    server = dedicated_server("postgres")
    engine = make_engine(server.url, retry_attempts=100, retry_timeout=10, pool_size=2)

    def read() -> None:
        with poolguard.deadline(10), engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1

    result = stream_during(lambda: server.restart(downtime=DOWNTIME), read)
    assert result.errors == []
    assert result.spans_fault()
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    assert snap["give_ups"] == 0


@both_async_drivers
async def test_async_restart_with_downtime_surfaces_no_error(
    dedicated_server: Any, make_async_engine: Any
) -> None:
    server = dedicated_server("postgres")
    engine = make_async_engine(server.url, retry_attempts=100, retry_timeout=10, pool_size=2)
    errors: list[Any] = []
    ok = 0

    def restart_soon() -> None:
        time.sleep(0.3)
        server.restart(downtime=DOWNTIME)

    restart = asyncio.get_running_loop().run_in_executor(None, restart_soon)
    while not restart.done():
        try:
            async with poolguard.deadline(10), engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            ok += 1
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        await asyncio.sleep(0.01)
    await restart
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    assert errors == []
    assert ok > 5
    assert poolguard.stats(engine)["retries"] >= 1


def test_freeze_is_bounded_by_the_deadline_and_pool_recovers(
    dedicated_server: Any, make_engine: Any
) -> None:
    server = dedicated_server("postgres")
    engine = make_engine(server.url, connect_timeout=0.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with server.frozen():
        started = time.monotonic()
        with (
            pytest.raises(poolguard.QueryTimeout) as info,
            poolguard.deadline(1.0),
            engine.connect() as conn,
        ):
            conn.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
    assert elapsed < 1.0 + GRACE, elapsed
    err = info.value
    assert isinstance(err, sqlalchemy.exc.OperationalError)
    assert isinstance(err, TimeoutError)
    assert poolguard.stats(engine)["evictions"]["timeout"] == 1
    with engine.connect() as conn:  # thawed: the cut connection was never returned
        assert conn.execute(text("SELECT 2")).scalar() == 2


def test_freeze_without_deadline_bounded_by_query_timeout(
    dedicated_server: Any, make_engine: Any
) -> None:
    server = dedicated_server("postgres")
    engine = make_engine(server.url, query_timeout=0.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        with server.frozen():
            started = time.monotonic()
            with pytest.raises(poolguard.QueryTimeout):
                conn.execute(text("SELECT 1"))
            elapsed = time.monotonic() - started
    # the server's statement_timeout cannot fire while frozen: the client backstop did
    assert elapsed < 0.5 + 0.5 + GRACE, elapsed


def test_freeze_during_checkout_of_a_new_connection(
    dedicated_server: Any, make_engine: Any
) -> None:
    server = dedicated_server("postgres")
    engine = make_engine(server.url, connect_timeout=0.3, retry_attempts=1)
    with server.frozen():
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout) as info:
            engine.connect()
        elapsed = time.monotonic() - started
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert elapsed < 0.3 + GRACE, elapsed


@both_async_drivers
async def test_async_freeze_is_bounded(dedicated_server: Any, make_async_engine: Any) -> None:
    server = dedicated_server("postgres")
    engine = make_async_engine(server.url)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    server.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout):
            async with poolguard.deadline(1.0), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
    finally:
        server.thaw()
    assert elapsed < 1.0 + GRACE, elapsed
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 3"))).scalar() == 3
