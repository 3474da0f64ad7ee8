"""Whole-server faults on one dedicated MariaDB: restart with downtime, SIGSTOP freeze."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard
from poolguard.testing import stream_during

pytestmark = [pytest.mark.mysql, pytest.mark.chaos, pytest.mark.slow]

#: "No call outlives its deadline by more than a small grace" (DESIGN "Testing").
GRACE = 0.5
DOWNTIME = 1.5
#: Longer than the downtime plus a restart, so retrying bridges the whole outage.
RIDE_THROUGH = {"retry_attempts": 100, "retry_timeout": 10, "pool_size": 2}
#: Connect-phase retries are bounded by retry_timeout, not by the attempt count (core).
ONE_CONNECT_ATTEMPT = {"retry_attempts": 1, "retry_timeout": 0.05}


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """One MariaDB for the module: restarted and frozen by its tests (each leaves it running)."""
    from poolguard.testing import MySQLServer

    with MySQLServer() as started:
        yield started


@pytest.mark.parametrize(
    "breaker",
    [
        pytest.param(None, id="no-breaker"),
        # The core's breaker lets callers wait for its half-open probe when that fits their
        # retry window (core commit 94318a8), so a restart passes with the breaker on too.
        pytest.param(5, id="default-breaker"),
    ],
)
def test_restart_with_downtime_surfaces_no_error(
    server: Any, make_engine: Any, breaker: int | None
) -> None:
    engine = make_engine(server.url, **RIDE_THROUGH, breaker_failures=breaker)

    def read() -> None:
        with poolguard.deadline(10), engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1

    result = stream_during(lambda: server.restart(downtime=DOWNTIME), read)
    assert result.errors == []
    assert result.spans_fault()
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    assert snap["give_ups"] == 0
    print(
        f"\nsync restart (breaker {breaker}): {len(result.ok)} reads ok, 0 errors,"
        f" retries {snap['retries_by_reason']}, breaker opened {snap['breaker']['opened']}x"
    )


async def test_async_restart_with_downtime_surfaces_no_error(
    server: Any, make_async_engine: Any
) -> None:
    engine = make_async_engine(server.url, **RIDE_THROUGH)
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
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    print(f"\nasync restart: {ok} reads ok, 0 errors, retries {snap['retries_by_reason']}")


def test_freeze_is_bounded_by_the_deadline_and_pool_recovers(server: Any, make_engine: Any) -> None:
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
    print(f"\nsync freeze: QueryTimeout after {elapsed:.2f}s (deadline 1.0s)")


def test_freeze_without_deadline_bounded_by_query_timeout(server: Any, make_engine: Any) -> None:
    engine = make_engine(server.url, query_timeout=0.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        with server.frozen():
            started = time.monotonic()
            with pytest.raises(poolguard.QueryTimeout):
                conn.execute(text("SELECT 1"))
            elapsed = time.monotonic() - started
    # max_statement_time cannot fire while the server is frozen: the client backstop did
    assert elapsed < 0.5 + 0.5 + GRACE, elapsed


def test_freeze_during_checkout_of_a_new_connection(server: Any, make_engine: Any) -> None:
    # A frozen mariadbd still completes the TCP handshake (the kernel does); PyMySQL would then
    # wait forever for the greeting: the handshake reads are bounded by connect_timeout too.
    engine = make_engine(server.url, connect_timeout=0.3, **ONE_CONNECT_ATTEMPT)
    with server.frozen():
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout) as info:
            engine.connect()
        elapsed = time.monotonic() - started
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert elapsed < 0.3 + GRACE, elapsed


async def test_async_freeze_is_bounded(server: Any, make_async_engine: Any) -> None:
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
        connect_started = time.monotonic()
        fresh = make_async_engine(server.url, connect_timeout=0.3, **ONE_CONNECT_ATTEMPT)
        with pytest.raises(poolguard.ConnectTimeout):
            await fresh.connect()
        connect_elapsed = time.monotonic() - connect_started
    finally:
        server.thaw()
    assert elapsed < 1.0 + GRACE, elapsed
    assert connect_elapsed < 0.3 + GRACE, connect_elapsed
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 3"))).scalar() == 3
