"""The native aiomysql pool on the shared MariaDB: API, acquire timeout, validation window,
eviction, guarded helpers, transactions, deadlock re-runs, errors, stats."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pymysql
import pytest

import poolguard
import poolguard.mysql

from .conftest import session_id

pytestmark = pytest.mark.mysql


async def _table(pool: Any) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    await pool.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
    return name


async def test_aiomysql_api_and_helpers(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url, pool_size=2, max_overflow=3)
    assert (pool.minsize, pool.maxsize, pool.size, pool.freesize) == (2, 5, 2, 2)
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
    conn = await pool.acquire()  # the await form, released by hand, as with aiomysql
    assert conn.get_autocommit()
    await pool.release(conn)
    assert await pool.fetchval("SELECT 41 + 1") == 42
    assert await pool.fetchall("SELECT 1 UNION ALL SELECT 2") == [(1,), (2,)]
    assert await pool.fetchone("SELECT 1 FROM DUAL WHERE 1 = 0") is None
    table = await _table(pool)
    assert await pool.execute(f"INSERT INTO {table} VALUES (1, 1), (2, 2)") == 2
    snap = poolguard.stats(pool)
    assert snap is not None
    assert snap["backend"] == "mysql"
    assert snap["size"] == 2
    assert snap["checked_out"] == 0
    assert snap["max"] == 5
    assert poolguard.mysql.stats(pool)["connects"] == 2


async def test_refuses_other_databases_and_reserved_arguments() -> None:
    with pytest.raises(poolguard.ConfigError, match="MySQL"):
        poolguard.mysql.create_async_pool("postgresql://u:secret@h/db")
    with pytest.raises(poolguard.ConfigError, match="maxsize"):
        poolguard.mysql.create_async_pool("mysql://u:secret@h/db", maxsize=3)


async def test_acquire_timeout_is_a_dropin_pool_timeout(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, acquire_timeout=0.3)
    async with pool.acquire():
        with pytest.raises(poolguard.PoolTimeout) as info:
            await pool.acquire()
        assert isinstance(info.value, pymysql.err.OperationalError)
        assert "1/1" in str(info.value)
        with poolguard.deadline(0.1), pytest.raises(poolguard.PoolTimeout):
            await pool.fetchval("SELECT 1")
    assert pool.stats()["acquire_timeouts"] == 2
    assert await pool.fetchval("SELECT 1") == 1  # the slot came back


async def test_released_connection_goes_to_the_oldest_waiter(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, acquire_timeout=10)
    held = await pool.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with pool.acquire():
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.01)  # queued in this order
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_closed_connection_released_wakes_a_waiter(mysql_server: Any, make_pool: Any) -> None:
    # aiomysql's own pool wakes nobody when a closed connection comes back: the waiter below
    # would sleep until its timeout.
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, acquire_timeout=5)
    held = await pool.acquire()
    task = asyncio.create_task(pool.fetchval("SELECT 5"))
    await asyncio.sleep(0.05)
    held.close()
    pool.release(held)
    assert await task == 5
    assert pool.stats()["acquire_timeouts"] == 0


async def test_fresh_connections_are_not_pinged_idle_ones_are(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, validate_idle=0.2)
    for _ in range(5):  # fresh, then reused within the window: no ping
        assert await pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 0
    await asyncio.sleep(0.3)
    assert await pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 1


async def test_validate_idle_zero_pings_every_reused_checkout(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, validate_idle=0)
    for _ in range(3):
        await pool.fetchval("SELECT 1")
    assert pool.stats()["validations"] == 2  # all but the first: fresh, not pinged


async def test_max_idle_and_lifetime_are_enforced_at_checkout(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, max_idle=0.2)
    async with pool.acquire() as conn:
        first = await session_id(conn)
    await asyncio.sleep(0.3)
    async with pool.acquire() as conn:
        assert await session_id(conn) != first
    assert pool.stats()["evictions"]["idle"] == 1

    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, max_lifetime=0.3)
    async with pool.acquire() as conn:
        first = await session_id(conn)
    seen = {first}
    for _ in range(8):  # used all the time (never idle), retired by age all the same
        await asyncio.sleep(0.05)
        async with pool.acquire() as conn:
            seen.add(await session_id(conn))
    assert len(seen) >= 2
    assert pool.stats()["evictions"]["lifetime"] >= 1


async def test_a_snapshot_never_leaks_to_the_next_user(mysql_server: Any, make_pool: Any) -> None:
    # autocommit off, a plain SELECT: MariaDB keeps the read view without IN_TRANS; aiomysql's
    # pool hands it to the next user, who then misses committed rows.
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0, autocommit=False)
    table = await _table(pool)
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(f"SELECT count(*) FROM {table}")
    other = await make_pool(mysql_server.url, pool_size=1, max_overflow=0)
    await other.execute(f"INSERT INTO {table} VALUES (1, 1)")
    async with pool.acquire() as conn:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchone() == (1,)
        await conn.rollback()


async def test_transaction_commits_and_rolls_back(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url)
    table = await _table(pool)

    async def insert(conn: Any) -> str:
        async with conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {table} VALUES (1, 10)")
        return "done"

    assert await pool.run_transaction(insert) == "done"
    with pytest.raises(pymysql.err.IntegrityError):
        await pool.transaction(insert)  # duplicate key: permanent, not re-run
    async with pool.transaction() as conn, conn.cursor() as cur:
        await cur.execute(f"INSERT INTO {table} VALUES (2, 20)")

    async def insert_then_fail() -> None:
        async with pool.transaction() as conn:
            async with conn.cursor() as cur:
                await cur.execute(f"INSERT INTO {table} VALUES (3, 30)")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await insert_then_fail()  # rolled back
    assert await pool.fetchall(f"SELECT id FROM {table} ORDER BY id") == [(1,), (2,)]
    assert pool.stats()["transaction_reruns"] == 0


async def test_deadlock_reruns_the_whole_unit(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url, pool_size=2, max_overflow=0, lock_timeout=5)
    table = await _table(pool)
    await pool.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    both_locked = asyncio.Event()
    arrived = 0
    runs: dict[str, int] = {"a": 0, "b": 0}

    def unit(name: str, first: int, second: int) -> Any:
        async def fn(conn: Any) -> None:
            nonlocal arrived
            runs[name] += 1
            async with conn.cursor() as cur:
                await cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (first,))
                if runs[name] == 1:  # both hold their first row before either asks for its second
                    arrived += 1
                    if arrived == 2:
                        both_locked.set()
                    await both_locked.wait()
                await cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (second,))

        return fn

    await asyncio.gather(
        pool.run_transaction(unit("a", 1, 2)), pool.run_transaction(unit("b", 2, 1))
    )
    # Each unit committed exactly once: every row got one increment from each.
    assert await pool.fetchall(f"SELECT v FROM {table} ORDER BY id") == [(2,), (2,)]
    assert sorted(runs.values()) == [1, 2]  # the deadlock victim ran again
    snap = pool.stats()
    assert snap["retries_by_reason"].get("deadlock") == 1


async def test_non_retryable_errors_surface_once(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url)
    with pytest.raises(pymysql.err.ProgrammingError):
        await pool.fetchval("SELEC 1")
    assert pool.stats()["retries"] == 0


async def test_wrong_password_never_shown(mysql_server: Any, make_pool: Any) -> None:
    url = mysql_server.url.replace("://app:", "://app:x", 1)
    assert url != mysql_server.url
    pool = await make_pool(url, open=False, retry_attempts=1)
    secret = url.split("://app:", 1)[1].split("@", 1)[0]
    with pytest.raises(pymysql.err.OperationalError) as info:
        await pool.fetchval("SELECT 1")
    assert secret not in str(info.value)
    assert secret not in repr(pool)


async def test_exporters_see_the_pool(mysql_server: Any, make_pool: Any) -> None:
    from poolguard.core import stats as core_stats

    pool = await make_pool(mysql_server.url, pool_size=2, name="orders")
    await pool.fetchval("SELECT 1")
    # OpenTelemetry reads the PoolStats registry; Prometheus goes through poolguard.stats().
    assert pool._my.guard.stats in core_stats.registered()
    pytest.importorskip("prometheus_client")
    from poolguard.metrics.prometheus import PoolguardCollector

    metrics = {m.name: m for m in PoolguardCollector({"orders": pool}).collect()}
    size = metrics["poolguard_size"].samples[0]
    assert size.labels == {"pool": "orders", "backend": "mysql"}
    assert size.value == 2


async def test_cancelled_checkouts_leak_no_slot(
    mysql_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    pool = await make_pool(
        proxy.url(mysql_server.url), pool_size=1, max_overflow=0, validate_idle=0
    )
    held = await pool.acquire()
    waiters = [asyncio.create_task(pool.fetchval("SELECT 1")) for _ in range(3)]
    await asyncio.sleep(0.05)
    for task in waiters:  # cancelled while queued for the only slot
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    pool.release(held)
    proxy.blackhole()
    pinging = asyncio.create_task(pool.fetchval("SELECT 1"))  # its checkout ping hangs
    while pool.stats()["validations"] < 1:
        await asyncio.sleep(0.01)
    pinging.cancel()
    await asyncio.gather(pinging, return_exceptions=True)
    proxy.clear()
    assert pool.size == 0  # the half-pinged connection was discarded, its slot given back
    assert await pool.fetchval("SELECT 2") == 2
    assert pool.size == 1


async def test_transaction_timeout_bounds_the_unit_and_is_not_rerun(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, transaction_timeout=0.3)
    calls = 0

    async def slow(conn: Any) -> None:
        nonlocal calls
        calls += 1
        async with conn.cursor() as cur:
            await cur.execute("SELECT SLEEP(0.1)")
            await cur.execute("SELECT SLEEP(2)")  # past the unit's 0.3 s: cut by the backstop

    with pytest.raises(poolguard.TransactionTimeout) as info:
        await pool.run_transaction(slow)
    assert isinstance(info.value, pymysql.err.OperationalError)
    assert calls == 1
    assert pool.stats()["evictions"]["timeout"] == 1
    assert await pool.fetchval("SELECT 1") == 1
