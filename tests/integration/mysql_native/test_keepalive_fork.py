"""Keepalive sweeps of the native aiomysql pool, and its refusal in a forked child."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import poolguard

from .conftest import kill

pytestmark = pytest.mark.mysql


async def test_keepalive_finds_killed_idle_sessions_before_a_request(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=2, max_overflow=0, keepalive=0.2)
    conns = [await pool.acquire() for _ in range(2)]
    ids = [conn.thread_id() for conn in conns]
    for conn in conns:
        pool.release(conn)
    kill(mysql_server, *ids)
    for _ in range(100):  # the sweep runs on this loop, scheduled by the keepalive thread
        if pool.stats()["keepalive_failures"] >= 2:
            break
        await asyncio.sleep(0.05)
    snap = pool.stats()
    assert snap["keepalive_failures"] == 2
    assert snap["evictions"]["keepalive"] == 2
    assert pool.freesize == 0  # nothing dead left for a request to meet
    assert await pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 0


async def test_pool_opened_before_fork_is_refused_in_the_child(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1)
    assert await pool.fetchval("SELECT 1") == 1
    pid = os.fork()
    if pid == 0:  # the child: drive the checkout by hand (no event loop of its own here)
        code = 1
        try:
            pool._acquire(None, breaker=True).send(None)
        except poolguard.PoolguardError as exc:
            code = 0 if "fork()" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert await pool.fetchval("SELECT 2") == 2  # the parent's pool is untouched
