"""The native pools on the shared PostgreSQL: settings, guarded helpers, validation, errors."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import psycopg_pool
import pytest

import poolguard
import poolguard.postgres

pytestmark = pytest.mark.postgres

GRACE = 0.5


class _Rendezvous:
    """One round of ``asyncio.Barrier`` (Python >= 3.11 only; poolguard supports 3.10)."""

    def __init__(self, parties: int) -> None:
        import asyncio

        self._left = parties
        self._all_arrived = asyncio.Event()

    async def wait(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._all_arrived.set()
        await self._all_arrived.wait()


def _table(pool: Any) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    pool.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
    return name


def test_is_a_psycopg_pool_configured_from_settings(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=3, max_overflow=4, acquire_timeout=7)
    assert isinstance(pool, psycopg_pool.ConnectionPool)
    assert (pool.min_size, pool.max_size, pool.timeout) == (3, 7, 7)
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not conn.autocommit  # psycopg's default, even after guarded helpers ran
    assert pool.fetchval("SELECT 41 + 1") == 42
    assert pool.fetchall("SELECT generate_series(1, 3)") == [(1,), (2,), (3,)]
    assert pool.fetchone("SELECT 1 WHERE false") is None
    with pool.connection() as conn:
        assert not conn.autocommit


def test_execute_is_autocommit_and_returns_rowcount(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url)
    table = _table(pool)
    assert pool.execute(f"INSERT INTO {table} VALUES (1, 1), (2, 2)") == 2
    assert pool.execute(f"UPDATE {table} SET v = v + 1", idempotent=False) == 2
    assert pool.fetchval(f"SELECT sum(v) FROM {table}") == 5


def test_stats_merge_psycopg_pool_gauges(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=2)
    with pool.connection():
        snap = pool.stats()
        assert snap["checked_out"] == 1
        assert snap["size"] >= 2
        assert snap["psycopg_pool"]["pool_min"] == 2
    snap = poolguard.postgres.stats(pool)
    assert snap["connects"] >= 2
    assert snap["acquire_wait_ms"]["count"] >= 1


def test_acquire_timeout_is_a_dropin_pool_timeout(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, acquire_timeout=0.3)
    with pool.connection():
        started = time.monotonic()
        with pytest.raises(poolguard.PoolTimeout) as info:
            pool.getconn()
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed <= 0.3 + GRACE
    err = info.value
    assert isinstance(err, psycopg_pool.PoolTimeout)
    assert isinstance(err, psycopg.OperationalError)
    assert isinstance(err, TimeoutError)
    assert "no connection became free within 0.30s" in str(err)
    assert "pool size 1/1" in str(err)
    assert "POOLGUARD_ACQUIRE_TIMEOUT" in str(err)
    assert postgres_server.password not in str(err) + repr(err)
    assert pool.stats()["acquire_wait_ms"]["max"] >= 250


def test_deadline_bounds_the_acquire(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, acquire_timeout=10)
    with pool.connection():
        started = time.monotonic()
        with poolguard.deadline(0.2), pytest.raises(psycopg_pool.PoolTimeout):
            pool.fetchval("SELECT 1")
        assert time.monotonic() - started <= 0.2 + GRACE


def test_spent_deadline_fails_the_checkout_before_waiting(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url)
    with poolguard.deadline(0.01):
        time.sleep(0.02)
        with pytest.raises(psycopg_pool.PoolTimeout) as info, pool.connection():
            pass
    assert isinstance(info.value, poolguard.PoolTimeout)
    assert "deadline exceeded" in str(info.value)


def test_fresh_connections_are_not_pinged_idle_ones_are(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, validate_idle=0.3)
    for _ in range(3):  # the first checkout gets the fresh connection, then it is never idle
        assert pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 0
    time.sleep(0.4)
    assert pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 1
    assert pool.fetchval("SELECT 1") == 1
    assert pool.stats()["validations"] == 1
    assert pool.stats()["validation_failures"] == 0


def test_validate_idle_zero_pings_every_reused_checkout(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, validate_idle=0)
    for _ in range(4):
        pool.fetchval("SELECT 1")
    assert pool.stats()["validations"] == 3  # not the fresh connection's first checkout


def test_max_idle_and_lifetime_are_enforced_at_checkout(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, max_idle=0.3)
    pid = pool.fetchval("SELECT pg_backend_pid()")
    time.sleep(0.4)
    assert pool.fetchval("SELECT pg_backend_pid()") != pid
    assert pool.stats()["evictions"]["idle"] >= 1

    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, max_lifetime=0.3)
    pid = pool.fetchval("SELECT pg_backend_pid()")
    time.sleep(0.4)
    assert pool.fetchval("SELECT pg_backend_pid()") != pid
    assert pool.stats()["evictions"]["lifetime"] == 1  # poolguard's own jittered expiry


def test_backstop_bounds_queries_on_a_handed_out_connection(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0)
    with pool.connection() as conn:
        started = time.monotonic()
        with poolguard.deadline(0.3), pytest.raises(poolguard.QueryTimeout) as info:
            conn.execute("SELECT pg_sleep(3)")
        assert time.monotonic() - started <= 0.3 + GRACE
        assert isinstance(info.value, psycopg.OperationalError)
        assert conn.closed  # cut and discarded: never handed out again
    assert pool.fetchval("SELECT 1") == 1  # a fresh connection replaced it
    assert pool.stats()["evictions"]["timeout"] == 1


def test_statement_timeout_is_a_query_timeout_and_query_canceled(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, query_timeout=0.2)
    with pytest.raises(poolguard.QueryTimeout) as info:
        pool.fetchval("SELECT pg_sleep(2)")
    assert isinstance(info.value, psycopg.errors.QueryCanceled)
    assert pool.stats()["retries"] == 0  # a timed-out statement is never re-run


def test_wrong_password_never_shown(postgres_server: Any, make_pool: Any) -> None:
    secret = "Sup3r-s3cret-pw"
    url = postgres_server.url.replace(f":{postgres_server.password}@", f":{secret}@")
    pool = make_pool(url, wait=False, acquire_timeout=0.5)
    with pytest.raises(poolguard.PoolTimeout) as info:
        pool.fetchval("SELECT 1")
    err: BaseException | None = info.value
    assert "cannot connect" in str(err)
    while err is not None:  # the whole chain
        assert secret not in str(err)
        assert secret not in repr(err)
        err = err.__cause__ or err.__context__
    assert secret not in repr(pool.stats())


def test_non_retryable_errors_surface_once(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url)
    table = _table(pool)
    pool.execute(f"INSERT INTO {table} VALUES (1, 0)")
    calls = 0

    def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(f"INSERT INTO {table} VALUES (1, 0)")

    with pytest.raises(psycopg.errors.UniqueViolation):
        pool.transaction(unit)
    assert calls == 1
    with pytest.raises(psycopg.errors.SyntaxError):
        pool.fetchval("SELEC 1")
    assert pool.stats()["retries"] == 0


def test_transaction_commits_and_rolls_back(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url)
    table = _table(pool)

    def unit(conn: Any) -> int:
        conn.execute(f"INSERT INTO {table} VALUES (1, 10)")
        return 7

    assert pool.transaction(unit) == 7

    def failing(conn: Any) -> None:
        conn.execute(f"INSERT INTO {table} VALUES (2, 20)")
        raise ValueError("app error")

    with pytest.raises(ValueError):
        pool.transaction(failing)
    assert pool.fetchall(f"SELECT id FROM {table}") == [(1,)]


def _conflicting_increments(pool: Any, table: str, workers: int, each: int) -> list[int]:
    """Serializable read-modify-write of one row from several threads: real 40001s."""
    barrier = threading.Barrier(workers, timeout=5)
    calls = [0] * workers
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        def unit(conn: Any) -> None:
            calls[index] += 1
            v = conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()[0]
            if calls[index] == 1:
                barrier.wait()  # everyone has read the same value: all but one must fail
            conn.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (v + 1,))

        try:
            for _ in range(each):
                pool.transaction(unit, isolation_level=psycopg.IsolationLevel.SERIALIZABLE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return calls


def test_serialization_failures_rerun_the_unit(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(
        postgres_server.url, pool_size=3, max_overflow=0, retry_attempts=20, retry_timeout=20
    )
    table = _table(pool)
    pool.execute(f"INSERT INTO {table} VALUES (1, 0)")
    calls = _conflicting_increments(pool, table, workers=3, each=5)
    assert pool.fetchval(f"SELECT v FROM {table} WHERE id = 1") == 15  # no lost update
    snap = pool.stats()
    assert sum(calls) > 15  # some units really ran more than once
    assert snap["retries_by_reason"].get("serialization_failure", 0) == sum(calls) - 15
    with pool.connection() as conn:  # isolation level restored for the next user
        assert conn.isolation_level is None


async def test_async_pool_basics(postgres_server: Any, make_async_pool: Any) -> None:
    pool = await make_async_pool(postgres_server.url, pool_size=1, max_overflow=0)
    assert isinstance(pool, psycopg_pool.AsyncConnectionPool)
    assert await pool.fetchval("SELECT 1") == 1
    table = f"t_{uuid.uuid4().hex[:10]}"
    await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")

    async def unit(conn: Any) -> int:
        cur = await conn.execute(f"INSERT INTO {table} VALUES (1, 1), (2, 2)")
        return int(cur.rowcount)

    assert await pool.transaction(unit) == 2
    async with pool.connection() as conn:
        assert not conn.autocommit
        cur = await conn.execute(f"SELECT sum(v) FROM {table}")
        assert await cur.fetchone() == (3,)
        started = time.monotonic()
        with poolguard.deadline(0.3), pytest.raises(poolguard.QueryTimeout):
            await conn.execute("SELECT pg_sleep(3)")
        assert time.monotonic() - started <= 0.3 + GRACE
    assert await pool.fetchval("SELECT 2") == 2
    async with pool.connection():
        with pytest.raises(psycopg_pool.PoolTimeout):
            await pool.getconn(timeout=0.2)
    assert pool.stats()["evictions"]["timeout"] == 1


@pytest.mark.pgbouncer
def test_pgbouncer_transaction_pooling_gets_local_timeouts(
    pgbouncer_server: Any, make_pool: Any
) -> None:
    pool = make_pool(pgbouncer_server.url, pgbouncer="on", query_timeout=0.3)
    assert pool.fetchval("SELECT 1") == 1
    with pytest.raises(poolguard.QueryTimeout):  # set_config(..., is_local) in each transaction
        pool.fetchval("SELECT pg_sleep(2)")
    # nothing leaked into the shared server sessions: outside our transactions, no timeout
    assert pool.fetchval("SELECT current_setting('statement_timeout')") == "300ms"
    with pool.connection() as conn:
        assert conn.execute("SELECT current_setting('statement_timeout')").fetchone() == ("0",)
    assert pool.transaction(lambda conn: conn.execute("SELECT 5").fetchone()[0]) == 5
    for _ in range(10):  # server-side prepared statements are off (they break under pooling)
        assert pool.fetchval("SELECT %s::int", (3,)) == 3


async def test_async_serialization_failures_rerun_the_unit(
    postgres_server: Any, make_async_pool: Any
) -> None:
    import asyncio

    pool = await make_async_pool(
        postgres_server.url, pool_size=3, max_overflow=0, retry_attempts=20, retry_timeout=20
    )
    table = f"t_{uuid.uuid4().hex[:10]}"
    await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
    await pool.execute(f"INSERT INTO {table} VALUES (1, 0)")
    barrier = _Rendezvous(3)
    calls = [0, 0, 0]

    async def worker(index: int) -> None:
        async def unit(conn: Any) -> None:
            calls[index] += 1
            cur = await conn.execute(f"SELECT v FROM {table} WHERE id = 1")
            (v,) = await cur.fetchone()
            if calls[index] == 1:
                await asyncio.wait_for(barrier.wait(), 5)  # all read the same value
            await conn.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (v + 1,))

        for _ in range(4):
            await pool.transaction(unit, isolation_level=psycopg.IsolationLevel.SERIALIZABLE)

    await asyncio.gather(*(worker(i) for i in range(3)))
    assert await pool.fetchval(f"SELECT v FROM {table} WHERE id = 1") == 12
    assert sum(calls) > 12
    assert pool.stats()["retries_by_reason"]["serialization_failure"] == sum(calls) - 12


def test_isolation_level_never_leaks_to_the_next_user(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0)

    def failing(conn: Any) -> None:
        conn.execute("SELECT 1")
        raise ValueError("app error inside a serializable unit")

    with pytest.raises(ValueError):
        pool.transaction(failing, isolation_level=psycopg.IsolationLevel.SERIALIZABLE)
    with pool.connection() as conn:  # the same, only connection
        assert conn.isolation_level is None
        level = conn.execute("SHOW transaction_isolation").fetchone()
    assert level == ("read committed",)
