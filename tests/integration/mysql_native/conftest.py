"""Fixtures for the native aiomysql pool tests: guarded pools closed after the test.

MariaDB has no client-chosen application name: tests find their sessions by
``CONNECTION_ID()`` (``session_id``) and KILL them as root (``kill``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

import poolguard
import poolguard.mysql
from poolguard.mysql import GuardedPool

#: Short timeouts and backoff keep fault tests fast; breaker and budget stay at their defaults.
FAST: dict[str, Any] = {
    "pool_size": 2,
    "max_overflow": 2,
    "connect_timeout": 1.0,
    "acquire_timeout": 3.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
}

PoolFactory = Callable[..., Awaitable[GuardedPool]]


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """``await make_pool(url, open=True, **overrides)``: a pool, terminated at teardown."""
    pools: list[GuardedPool] = []

    async def make(url: str, *, open: bool = True, **overrides: Any) -> GuardedPool:
        pool = poolguard.mysql.create_async_pool(url, **{**FAST, **overrides})
        pools.append(pool)
        if open:
            await pool.open()
        return pool

    yield make
    for pool in pools:
        pool.terminate()


async def session_id(conn: Any) -> int:
    async with conn.cursor() as cur:
        await cur.execute("SELECT CONNECTION_ID()")
        row = await cur.fetchone()
    return int(row[0])


def kill(server: Any, *ids: int) -> None:
    """``KILL CONNECTION`` each id, as root over the server's Unix socket."""
    server.sql("".join(f"KILL CONNECTION {int(i)};" for i in ids))


@pytest.fixture(autouse=True)
def _no_backoff_surprises() -> Iterator[None]:
    yield
    poolguard.set_testing(False)
