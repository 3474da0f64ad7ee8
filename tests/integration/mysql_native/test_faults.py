"""Real faults against the native aiomysql pool: restart under a mixed load, KILLed sessions,
a frozen server, a lost COMMIT reply. The invariants: reads see no error, an acknowledged write
is present exactly once, no write is ever applied twice, no call outlives its deadline."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pymysql
import pytest

import poolguard

from .conftest import kill

pytestmark = [pytest.mark.mysql, pytest.mark.chaos]

#: "No call outlives its deadline by more than a small grace" (DESIGN "Testing").
GRACE = 0.5


async def _ledger(pool: Any) -> str:
    """A table that records each write by its id, *without* a unique key: a write applied
    twice shows up as a count of 2 instead of failing."""
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {name} (n int AUTO_INCREMENT PRIMARY KEY, op char(32))")
    return name


async def _count(pool: Any, table: str, op: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table} WHERE op = %s", (op,)))


@pytest.mark.slow
async def test_restart_under_mixed_load(dedicated_server: Any, make_pool: Any) -> None:
    server = dedicated_server("mysql")
    pool = await make_pool(server.url, pool_size=4, max_overflow=4)
    ledger = await _ledger(pool)
    accounts = f"acct_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {accounts} (id int PRIMARY KEY, v int NOT NULL)")
    await pool.execute(f"INSERT INTO {accounts} VALUES (1, 1000), (2, 1000)")
    read_errors: list[BaseException] = []
    acked: list[str] = []  # writes and units the pool said were done
    ambiguous: list[str] = []
    other: list[BaseException] = []
    stop = asyncio.Event()
    ids = itertools.count()

    async def reader() -> int:
        n = 0
        while not stop.is_set():
            try:
                with poolguard.deadline(10):
                    assert await pool.fetchval("SELECT 1") == 1
                n += 1
            except Exception as exc:
                read_errors.append(exc)
            await asyncio.sleep(0.005)
        return n

    async def writer() -> None:
        while not stop.is_set():
            op = f"w{next(ids)}"
            try:
                with poolguard.deadline(10):
                    await pool.execute(f"INSERT INTO {ledger} (op) VALUES (%s)", (op,))
                acked.append(op)
            except poolguard.AmbiguousResultError:
                ambiguous.append(op)
            except Exception as exc:
                other.append(exc)
            await asyncio.sleep(0.005)

    async def transferrer() -> None:
        while not stop.is_set():
            op = f"u{next(ids)}"

            async def unit(conn: Any, op: str = op) -> None:
                async with conn.cursor() as cur:
                    await cur.execute(f"UPDATE {accounts} SET v = v - 1 WHERE id = 1")
                    await cur.execute(f"UPDATE {accounts} SET v = v + 1 WHERE id = 2")
                    await cur.execute(f"INSERT INTO {ledger} (op) VALUES (%s)", (op,))

            try:
                with poolguard.deadline(10):
                    await pool.run_transaction(unit)
                acked.append(op)
            except poolguard.AmbiguousResultError:
                ambiguous.append(op)
            except Exception as exc:
                other.append(exc)
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(reader()) for _ in range(3)]
    tasks += [asyncio.create_task(writer()) for _ in range(2)]
    tasks += [asyncio.create_task(transferrer()) for _ in range(2)]
    await asyncio.sleep(0.3)
    await asyncio.to_thread(server.restart, downtime=1.0)
    await asyncio.sleep(0.5)
    stop.set()
    reads = await asyncio.gather(*tasks)

    assert read_errors == []
    assert other == []
    assert sum(r for r in reads if r) > 20
    counts = dict(await pool.fetchall(f"SELECT op, count(*) FROM {ledger} GROUP BY op"))
    assert all(n == 1 for n in counts.values()), "a write was applied twice"
    assert all(counts.get(op) == 1 for op in acked), "an acknowledged write is missing"
    units = sum(1 for op in counts if op.startswith("u"))
    assert await pool.fetchall(f"SELECT v FROM {accounts} ORDER BY id") == [
        (1000 - units,),
        (1000 + units,),
    ]
    snap = pool.stats()
    assert snap["disconnects"] >= 1
    assert snap["connects"] > 4  # the pool reconnected after the restart


async def test_killed_idle_sessions_are_replaced_without_errors(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=3, max_overflow=0, validate_idle=None)
    conns = [await pool.acquire() for _ in range(3)]
    ids = [conn.thread_id() for conn in conns]
    for conn in conns:
        pool.release(conn)
    ledger = await _ledger(pool)
    kill(mysql_server, *ids)
    await asyncio.sleep(0.05)  # the loop reads the servers' goodbyes
    for i in range(6):  # every pooled session is dead; writes too see no error
        assert await pool.fetchval("SELECT %s", (i,)) == i
        await pool.execute(f"INSERT INTO {ledger} (op) VALUES (%s)", (f"w{i}",))
    assert await pool.fetchval(f"SELECT count(*) FROM {ledger}") == 6
    snap = pool.stats()
    assert snap["evictions"]["disconnect"] >= 1
    assert snap["give_ups"] == 0


@pytest.mark.slow
async def test_crash_with_idle_connections_costs_no_attempt(
    dedicated_server: Any, make_pool: Any
) -> None:
    """Every session dies without a word (SIGKILL of the server): one read then runs on its
    first attempt; the dead idle connections are found at checkout (the loop saw their EOF),
    none is handed out. The psycopg twin (postgres_native) costs one retry: libpq sees no EOF
    until it reads."""
    server = dedicated_server("mysql")
    pool = await make_pool(server.url, pool_size=3, max_overflow=0, validate_idle=None)
    conns = [await pool.acquire() for _ in range(3)]
    for conn in conns:
        pool.release(conn)
    await asyncio.to_thread(server.restart, crash=True)
    await asyncio.sleep(0.05)  # the loop reads the EOFs
    with poolguard.deadline(20):
        assert await pool.fetchval("SELECT 1") == 1
    snap = pool.stats()
    assert snap["give_ups"] == 0
    assert snap["retries"] == 0
    assert snap["evictions"]["disconnect"] == 3


async def _kill_soon(server: Any, conn_id: int, delay: float) -> None:
    await asyncio.sleep(delay)
    await asyncio.to_thread(kill, server, conn_id)


async def _busy_session(pool: Any) -> int:
    """The server id of the connection the next checkout gets (pool_size=1)."""
    async with pool.acquire() as conn:
        return int(conn.thread_id())


async def test_killed_busy_read_is_retried(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0)
    victim = await _busy_session(pool)
    killer = asyncio.create_task(_kill_soon(mysql_server, victim, 0.2))
    assert await pool.fetchval("SELECT 7 FROM (SELECT SLEEP(0.6)) AS s") == 7
    await killer
    assert pool.stats()["retries"] == 1


async def test_killed_busy_autocommit_write_is_ambiguous_not_retried(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=0)
    ledger = await _ledger(pool)
    victim = await _busy_session(pool)
    killer = asyncio.create_task(_kill_soon(mysql_server, victim, 0.2))
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        await pool.execute(f"INSERT INTO {ledger} (op) SELECT 'w' FROM (SELECT SLEEP(0.6)) AS s")
    await killer
    assert isinstance(info.value, pymysql.err.OperationalError)
    assert await _count(pool, ledger, "w") <= 1
    snap = pool.stats()
    assert snap["retries"] == 0
    assert snap["ambiguous"] == 1


async def test_killed_unit_before_commit_is_rerun_once(mysql_server: Any, make_pool: Any) -> None:
    pool = await make_pool(mysql_server.url, pool_size=1, max_overflow=1)
    ledger = await _ledger(pool)
    calls = 0

    async def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        async with conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {ledger} (op) VALUES ('u')")
            if calls == 1:
                await asyncio.to_thread(kill, mysql_server, conn.thread_id())
            await cur.execute("SELECT 1")  # meets the dead session: the unit is re-run

    await pool.run_transaction(unit)
    assert calls == 2
    assert await _count(pool, ledger, "u") == 1
    assert pool.stats()["transaction_reruns"] == 1


@pytest.mark.slow
async def test_frozen_server_is_bounded_by_the_deadline_then_recovers(
    dedicated_server: Any, make_pool: Any
) -> None:
    server = dedicated_server("mysql")
    # validate_idle off: the idle connection is handed out unpinged, so the query meets the freeze
    pool = await make_pool(server.url, pool_size=3, query_timeout=0.5, validate_idle=None)
    assert await pool.fetchval("SELECT 1") == 1
    server.freeze()
    try:
        # No deadline: the query timeout's backstop (0.5 s + 0.5 s grace) bounds a raw query.
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout) as info:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT 1")
        assert isinstance(info.value, pymysql.err.OperationalError)
        assert time.monotonic() - started <= 1.0 + GRACE
        # The deadline bounds a guarded statement, retries and reconnects included.
        started = time.monotonic()
        with poolguard.deadline(1.0), pytest.raises(pymysql.err.OperationalError):
            await pool.fetchval("SELECT 1")
        assert time.monotonic() - started <= 1.0 + GRACE
        # A unit of work, too (the deadline bounds the whole unit).
        started = time.monotonic()
        with poolguard.deadline(1.0), pytest.raises(pymysql.err.OperationalError):
            await pool.run_transaction(lambda conn: conn.query("SELECT 1"))
        assert time.monotonic() - started <= 1.0 + GRACE
    finally:
        server.thaw()
    with poolguard.deadline(5):
        assert await pool.fetchval("SELECT 1") == 1


async def test_lost_commit_reply_is_ambiguous_and_never_reapplied(
    mysql_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    pool = await make_pool(proxy.url(mysql_server.url), query_timeout=0.3)
    ledger = await _ledger(pool)
    calls = 0

    async def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        async with conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {ledger} (op) VALUES ('c')")
        proxy.blackhole("downstream")  # the COMMIT goes out, its reply never comes back

    started = time.monotonic()
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        await pool.run_transaction(unit)
    assert time.monotonic() - started <= 0.3 + 0.5 + GRACE
    assert isinstance(info.value, pymysql.err.OperationalError)
    assert calls == 1
    proxy.clear()
    direct = await make_pool(mysql_server.url)
    assert await _count(direct, ledger, "c") == 1  # applied once, by the lost COMMIT
    assert pool.stats()["ambiguous"] == 1


async def test_connection_lost_after_commit_was_sent_is_ambiguous(
    mysql_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    # Not a backstop cut: the link closes right after the COMMIT packet went out (2013). The
    # server may have committed; re-running the unit could apply it twice.
    proxy = fault_proxy(mysql_server)
    pool = await make_pool(proxy.url(mysql_server.url))
    ledger = await _ledger(pool)
    calls = 0

    async def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        async with conn.cursor() as cur:
            await cur.execute(f"INSERT INTO {ledger} (op) VALUES ('c')")
        if calls == 1:
            proxy.close_after(len(b"\x07\x00\x00\x00\x03COMMIT"), "upstream")

    with pytest.raises(poolguard.AmbiguousResultError):
        await pool.run_transaction(unit)
    assert calls == 1
    proxy.clear()
    direct = await make_pool(mysql_server.url)
    assert await _count(direct, ledger, "c") <= 1
    assert pool.stats()["ambiguous"] == 1


async def test_raw_acquire_rides_out_refused_connects(
    mysql_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    # aiomysql's acquire() raises the first failed connect; a checkout sent nothing, so the
    # pool keeps connecting (with backoff) within the acquire wait.
    proxy = fault_proxy(mysql_server)
    pool = await make_pool(proxy.url(mysql_server.url), open=False, acquire_timeout=5)
    proxy.down()
    task = asyncio.create_task(_acquire_and_select(pool))
    for _ in range(3000):  # a hang guard, not a time bound: the acquire wait is 5 s
        if pool.stats()["connect_failures"] >= 2 or task.done():
            break
        await asyncio.sleep(0.01)
    proxy.up()
    assert await asyncio.wait_for(task, 30) == 1
    assert pool.stats()["connect_failures"] >= 2


async def _acquire_and_select(pool: Any) -> int:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT 1")
        return int((await cur.fetchone())[0])


async def test_breaker_opens_on_a_dead_server_and_closes_when_it_returns(
    mysql_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    pool = await make_pool(
        proxy.url(mysql_server.url), open=False, retry_attempts=1, breaker_reset=0.3
    )
    proxy.down()
    for _ in range(5):  # the default threshold: 5 failed connects
        with pytest.raises(pymysql.err.OperationalError):
            await pool.fetchval("SELECT 1")
    assert pool.stats()["breaker"]["state"] == "open"
    with pytest.raises(poolguard.CircuitOpenError) as info:
        async with pool.acquire():
            pass
    assert isinstance(info.value, pymysql.err.OperationalError)
    assert pool.stats()["connect_failures"] == 5  # failed fast: no sixth connect
    proxy.up()
    await asyncio.sleep(0.35)
    assert await pool.fetchval("SELECT 1") == 1  # the half-open probe succeeds
    assert pool.stats()["breaker"]["state"] == "closed"


async def test_sessions_killed_under_mixed_concurrent_load(
    mysql_server: Any, make_pool: Any
) -> None:
    pool = await make_pool(mysql_server.url, pool_size=4, max_overflow=2)
    ledger = await _ledger(pool)
    read_errors: list[BaseException] = []
    acked: list[str] = []
    unexpected: list[BaseException] = []
    stop = asyncio.Event()
    ids = itertools.count()

    async def reader() -> None:
        while not stop.is_set():
            try:
                with poolguard.deadline(10):
                    assert await pool.fetchval("SELECT 1") == 1
            except Exception as exc:
                read_errors.append(exc)
            await asyncio.sleep(0.002)

    async def writer(unit: bool) -> None:
        while not stop.is_set():
            op = f"{'u' if unit else 'w'}{next(ids)}"

            async def fn(conn: Any, op: str = op) -> None:
                async with conn.cursor() as cur:
                    await cur.execute(f"INSERT INTO {ledger} (op) VALUES (%s)", (op,))
                    await cur.execute("SELECT 1")

            try:
                with poolguard.deadline(10):
                    if unit:
                        await pool.run_transaction(fn)
                    else:
                        await pool.execute(f"INSERT INTO {ledger} (op) VALUES (%s)", (op,))
                acked.append(op)
            except poolguard.AmbiguousResultError:
                pass  # may or may not be there: checked below to be there at most once
            except Exception as exc:
                unexpected.append(exc)
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(reader()) for _ in range(3)]
    tasks += [asyncio.create_task(writer(unit)) for unit in (False, False, True, True)]
    killed = 0
    for _ in range(6):
        await asyncio.sleep(0.15)
        killed += await asyncio.to_thread(mysql_server.kill_connections)
    stop.set()
    await asyncio.gather(*tasks)

    assert killed >= 6
    assert read_errors == []
    assert unexpected == []
    counts = dict(await pool.fetchall(f"SELECT op, count(*) FROM {ledger} GROUP BY op"))
    assert all(n == 1 for n in counts.values()), "a write was applied twice"
    assert all(counts.get(op) == 1 for op in acked), "an acknowledged write is missing"
    assert pool.stats()["disconnects"] >= 1
