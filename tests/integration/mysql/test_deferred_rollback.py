"""MySQL/MariaDB: the ROLLBACK of ``Connection.close()`` is sent, not waited for; the next
checkout reads its OK packet (PyMySQL and aiomysql).

What must hold (issue 9, "fewer round trips"): the server ends the transaction before the
connection sits idle in the pool (no open InnoDB transaction, no locks held); a reply that never
comes, or a connection that died meanwhile, discards the connection at the next checkout —
bounded, and never an error for that caller; uncommitted work is rolled back before the next
use, and the driver's state is the one ``rollback()`` leaves.

Every engine here has ``query_timeout`` set, so the previous behaviour (close() waits for the
ROLLBACK's reply) ends in a backstop cut instead of hanging the test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymysql
import pytest
from sqlalchemy import text

import poolguard

from .conftest import connection_id, kill

pytestmark = [pytest.mark.mysql, pytest.mark.chaos]

BOUNDED = {"pool_size": 1, "max_overflow": 0, "query_timeout": 1.0, "validate_idle": None}
TABLE = "my_deferred_rb"


def _async_url(url: str) -> str:
    return url.replace("mysql://", "mysql+aiomysql://", 1)


@pytest.fixture
def table(mysql_server: Any) -> str:
    mysql_server.sql(
        f"CREATE TABLE IF NOT EXISTS app.{TABLE} (id int PRIMARY KEY) ENGINE=InnoDB;"
        f" DELETE FROM app.{TABLE};"
    )
    return TABLE


def _open_transactions(server: Any, thread_id: int) -> int:
    """InnoDB transactions of session ``thread_id``, once it is no longer running a command
    (the server reads what we sent at its own pace: poll, no clock)."""
    for _ in range(500):
        command = server.sql(
            f"SELECT COMMAND FROM information_schema.PROCESSLIST WHERE ID = {int(thread_id)};"
        )
        if command == "Sleep":
            break
        time.sleep(0.01)
    rows = server.sql(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX"
        f" WHERE trx_mysql_thread_id = {int(thread_id)};"
    )
    return int(rows)


def _pooled_driver(engine: Any) -> Any:
    pool = getattr(engine, "sync_engine", engine).pool
    records = list(pool._pool._idle)  # the fair queue's idle records (_handoff.FairQueue)
    assert len(records) == 1
    raw = records[0].dbapi_connection
    return getattr(raw, "driver_connection", raw)  # asyncio: SQLAlchemy's adapter


def _pending(engine: Any) -> bool:
    """Does the pooled connection have a ROLLBACK in flight (sent, reply unread)?"""
    return bool(getattr(_pooled_driver(engine), "_poolguard_rollback_sent", False))


def _stats(engine: Any) -> dict[str, Any]:
    return poolguard.stats(engine)


# --- the caller does not wait; the server has ended the transaction -----------------------------


def test_close_sends_the_rollback_without_waiting_for_the_reply(
    make_engine: Any, fault_proxy: Any, mysql_server: Any, table: str
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_engine(proxy.url(mysql_server.url), **BOUNDED)
    with engine.connect() as conn:
        victim = connection_id(conn)
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))  # never committed
        proxy.blackhole("downstream")  # no reply reaches the client from now on
    # close() returned without the ROLLBACK's reply and did not cut the connection; before, it
    # waited for the reply until the backstop cut it (evictions.timeout == 1)
    assert _stats(engine)["evictions"]["timeout"] == 0
    assert _pending(engine)
    # ... and the server has ended the transaction: no InnoDB transaction (row lock) is held
    # by the pooled connection
    assert _open_transactions(mysql_server, victim) == 0
    proxy.clear()  # the held reply arrives; the next checkout reads it
    with engine.connect() as conn:
        assert connection_id(conn) == victim
        assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0


async def test_async_close_sends_the_rollback_without_waiting_for_the_reply(
    make_async_engine: Any, fault_proxy: Any, mysql_server: Any, table: str
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_async_engine(_async_url(proxy.url(mysql_server.url)), **BOUNDED)
    async with engine.connect() as conn:
        victim = int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar())
        await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        proxy.blackhole("downstream")
    assert _stats(engine)["evictions"]["timeout"] == 0
    assert _pending(engine)
    assert await asyncio.to_thread(_open_transactions, mysql_server, victim) == 0
    proxy.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT CONNECTION_ID()"))).scalar() == victim
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar() == 0
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0


def test_driver_state_is_the_one_rollback_leaves(
    make_engine: Any, mysql_server: Any, table: str
) -> None:
    """After the deferred reply is read: the status flags of the ROLLBACK's OK packet, no
    result, the packet sequence of a finished command, as PyMySQL's own rollback() leaves."""
    reference = pymysql.connect(**_pymysql_args(mysql_server.url))
    try:
        reference.cursor().execute(f"INSERT INTO {table} VALUES (5)")
        reference.rollback()
        expected = (reference.server_status, reference._result, reference._next_seq_id)
    finally:
        reference.close()
    engine = make_engine(mysql_server.url, **BOUNDED)
    with engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
    driver = _pooled_driver(engine)
    assert _pending(engine)
    with engine.connect() as conn:
        assert conn.connection.driver_connection is driver
        assert (driver.server_status, driver._result, driver._next_seq_id) == expected
        assert not getattr(driver, "_poolguard_rollback_sent", False)


def _pymysql_args(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "database": u.database,
    }


# --- faults while the reply is pending ----------------------------------------------------------


def test_connection_lost_before_the_reply_is_discarded_without_error(
    make_engine: Any, fault_proxy: Any, mysql_server: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_engine(proxy.url(mysql_server.url), **BOUNDED)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        proxy.blackhole("downstream")
    proxy.reset()  # RST the link: the reply never comes
    proxy.clear()
    with engine.connect() as conn:  # this caller sees no error: a fresh connection
        assert conn.execute(text("SELECT 2")).scalar() == 2
    snap = _stats(engine)
    assert snap["connects"] == 2
    assert snap["evictions"]["disconnect"] == 1
    assert snap["give_ups"] == 0


async def test_async_connection_lost_before_the_reply_is_discarded_without_error(
    make_async_engine: Any, fault_proxy: Any, mysql_server: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_async_engine(_async_url(proxy.url(mysql_server.url)), **BOUNDED)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        proxy.blackhole("downstream")
    proxy.reset()
    proxy.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    snap = _stats(engine)
    assert snap["connects"] == 2
    assert snap["evictions"]["disconnect"] == 1
    assert snap["give_ups"] == 0


def test_reply_that_never_comes_is_bounded_and_evicts(
    make_engine: Any, fault_proxy: Any, mysql_server: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_engine(proxy.url(mysql_server.url), **BOUNDED)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        proxy.blackhole("downstream")  # server frozen / network down, link still open
    # The next checkout waits for the reply no longer than the deadline, discards the
    # connection, and a new one cannot be opened either: a timeout, not a hang.
    with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.5):
        engine.connect()
    assert _stats(engine)["evictions"]["timeout"] == 1  # the connection left the pool
    proxy.clear()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 3")).scalar() == 3
    assert _stats(engine)["connects"] == 2


async def test_async_reply_that_never_comes_is_bounded_and_evicts(
    make_async_engine: Any, fault_proxy: Any, mysql_server: Any
) -> None:
    proxy = fault_proxy(mysql_server)
    engine = make_async_engine(_async_url(proxy.url(mysql_server.url)), **BOUNDED)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        proxy.blackhole("downstream")
    with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.5):
        await engine.connect()  # awaited the StreamReader (the loop ran meanwhile), gave up
    assert _stats(engine)["evictions"]["timeout"] == 1
    proxy.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 3"))).scalar() == 3
    assert _stats(engine)["connects"] == 2


def test_killed_after_close_next_caller_sees_no_error(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, **BOUNDED)
    for i in range(3):
        with engine.connect() as conn:
            victim = connection_id(conn)
        kill(mysql_server, victim)
        with engine.connect() as conn:  # a read: retried or reconnected, never surfaced
            assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
    snap = _stats(engine)
    assert snap["give_ups"] == 0
    assert snap["connects"] == 4


async def test_async_killed_after_close_next_caller_sees_no_error(
    make_async_engine: Any, mysql_server: Any
) -> None:
    engine = make_async_engine(_async_url(mysql_server.url), **BOUNDED)
    for i in range(3):
        async with engine.connect() as conn:
            victim = int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar())
        await asyncio.to_thread(kill, mysql_server, victim)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT :i"), {"i": i})).scalar() == i
    snap = _stats(engine)
    assert snap["give_ups"] == 0
    assert snap["connects"] == 4


# --- transaction semantics unchanged ------------------------------------------------------------


def test_uncommitted_work_is_rolled_back_before_the_next_use(
    make_engine: Any, mysql_server: Any, table: str
) -> None:
    engine = make_engine(mysql_server.url, **BOUNDED)
    with engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))  # never committed
    assert _pending(engine)
    with engine.connect() as conn:  # same connection (pool of 1)
        assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 0
        conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT id FROM {table}")).scalars().all() == [2]
    assert _stats(engine)["connects"] == 1


async def test_async_uncommitted_work_is_rolled_back_before_the_next_use(
    make_async_engine: Any, mysql_server: Any, table: str
) -> None:
    engine = make_async_engine(_async_url(mysql_server.url), **BOUNDED)
    async with engine.connect() as conn:
        await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
    assert _pending(engine)
    async with engine.connect() as conn:
        assert (await conn.execute(text(f"SELECT COUNT(*) FROM {table}"))).scalar() == 0
        await conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
        await conn.commit()
    async with engine.connect() as conn:
        assert (await conn.execute(text(f"SELECT id FROM {table}"))).scalars().all() == [2]
    assert _stats(engine)["connects"] == 1


def test_unbuffered_result_left_open_is_not_deferred(make_engine: Any, mysql_server: Any) -> None:
    """An unread streamed result must be drained before a ROLLBACK (PyMySQL does it in
    rollback()): that close waits, as before, and the connection stays usable."""
    engine = make_engine(mysql_server.url, **BOUNDED)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(
            text("SELECT seq FROM seq_1_to_10000")
        )
        assert result.fetchmany(3) == [(1,), (2,), (3,)]
    assert not _pending(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 4")).scalar() == 4
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0
