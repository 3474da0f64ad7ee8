"""Keepalive (``POOLGUARD_KEEPALIVE``) of the native psycopg pools, against a real PostgreSQL.

Through a NAT-like idle cut (FaultProxy.idle_cut): keepalive keeps links busy enough not to be
cut, or finds the cut ones and psycopg_pool refills to min_size; a connection checked out in a
transaction is never pinged (pg_stat_activity); the asyncio pool is swept on its loop and
unwatched at close(). Waits are for conditions; ping counts stand for elapsed time (a connection
is pinged at most once per interval).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from poolguard.core import keepalive

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

SIZE = 2
HANG_GUARD = 30.0
BARE: dict[str, Any] = {"validate_idle": None, "max_idle": None, "retry_attempts": 1}


def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never became true"
        time.sleep(0.02)


def stat(pool: Any, key: str) -> Any:
    return pool.stats()[key]


def test_idle_cut_links_kept_busy(make_pool: Any, postgres_server: Any, fault_proxy: Any) -> None:
    proxy = fault_proxy(postgres_server)
    proxy.idle_cut(1.0)
    pool = make_pool(proxy.url(postgres_server.url), pool_size=SIZE, keepalive=0.25, **BARE)
    # 7 pings of each connection span >= 1.5 s > the 1 s cut.
    until(lambda: stat(pool, "keepalive_pings") >= 7 * SIZE, "7 keepalive rounds")
    assert proxy.idle_cuts == 0
    assert pool.fetchval("SELECT 1") == 1
    assert stat(pool, "connects") == SIZE
    assert stat(pool, "keepalive_failures") == 0


def test_idle_cut_links_evicted_and_refilled(
    make_pool: Any, postgres_server: Any, fault_proxy: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    pool = make_pool(proxy.url(postgres_server.url), pool_size=SIZE, keepalive=1.0, **BARE)
    proxy.idle_cut(0.3)
    until(lambda: stat(pool, "evictions")["keepalive"] >= SIZE, "keepalive evictions")
    proxy.clear()
    until(lambda: stat(pool, "connects") >= 2 * SIZE, "replacements (psycopg_pool refill)")
    ok0 = _ok_pings(pool)
    until(lambda: _ok_pings(pool) >= ok0 + 2 * SIZE, "two clean rounds")
    until(lambda: stat(pool, "idle") == SIZE, "back to min_size idle connections")
    with pool.connection() as a, pool.connection() as b:
        assert a.execute("SELECT 1").fetchone() == (1,)
        assert b.execute("SELECT 1").fetchone() == (1,)


def _ok_pings(pool: Any) -> int:
    return int(stat(pool, "keepalive_pings") - stat(pool, "keepalive_failures"))


def test_checked_out_connection_is_never_pinged(make_pool: Any, postgres_server: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=SIZE, keepalive=0.1, **BARE)
    marker = "SELECT pg_backend_pid() /* held in a transaction */"
    with pool.connection() as held:
        pid = held.execute(marker).fetchone()[0]  # type: ignore[index]
        pings = stat(pool, "keepalive_pings")
        until(lambda: stat(pool, "keepalive_pings") >= pings + 10, "10 more pings")
        with psycopg.connect(postgres_server.url.replace("+psycopg", "")) as admin:
            row = admin.execute(
                "SELECT query, state FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        assert row == (marker, "idle in transaction")
    assert stat(pool, "keepalive_failures") == 0


async def test_asyncio_pool_swept_on_its_loop(make_async_pool: Any, postgres_server: Any) -> None:
    pool = await make_async_pool(postgres_server.url, pool_size=SIZE, keepalive=0.1, **BARE)
    stop = time.monotonic() + HANG_GUARD
    while pool.stats()["keepalive_pings"] < 3 * SIZE:
        assert time.monotonic() < stop, "the asyncio pool was never pinged"
        await asyncio.sleep(0.02)  # the loop must run: the sweep is a task on it
    assert await pool.fetchval("SELECT 1") == 1
    assert pool.stats()["keepalive_failures"] == 0
    watched = keepalive.watched()
    await pool.close()
    assert keepalive.watched() == watched - 1
