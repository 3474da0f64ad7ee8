"""The ROLLBACK of ``Connection.close()`` is sent, not waited for; the next checkout reads it.

What must hold (issue 9, "fewer round trips"): the server ends the transaction before the
connection sits idle in the pool (no locks, no xmin held); a reply that never comes, or a
connection that died meanwhile, discards the connection at the next checkout — bounded, and
never an error for that caller; transaction semantics are unchanged (uncommitted work is
rolled back before the next use, characteristics are reset, savepoints and server-side cursors
behave as before).

Every engine here has ``query_timeout`` set, so the previous behaviour (close() waits for the
ROLLBACK's reply) ends in a backstop cut instead of hanging the test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

BOUNDED = {"pool_size": 1, "max_overflow": 0, "query_timeout": 1.0}


def _session_state(server: Any, app_name: str) -> list[str]:
    """pg_stat_activity.state of the test's sessions, once none is still running a command."""
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        for _ in range(500):  # the server reads what we sent at its own pace: poll, no clock
            rows = admin.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = %s", [app_name]
            ).fetchall()
            states = [row[0] for row in rows]
            if "active" not in states:
                return states
            time.sleep(0.01)
    return states


def _pending(engine: Any) -> bool:
    """Does the pooled connection have a ROLLBACK in flight (sent, reply unread)?"""
    pool = getattr(engine, "sync_engine", engine).pool
    records = list(pool._pool._idle)  # the fair queue's idle records (_handoff.FairQueue)
    assert len(records) == 1
    raw = records[0].dbapi_connection
    driver = getattr(raw, "driver_connection", raw)  # asyncio: SQLAlchemy's adapter
    return bool(getattr(driver, "_poolguard_rollback_sent", False))


def _stats(engine: Any) -> dict[str, Any]:
    return poolguard.stats(engine)


# --- the caller does not wait; the server has ended the transaction -----------------------------


def test_close_sends_the_rollback_without_waiting_for_the_reply(
    make_engine: Any, fault_proxy: Any, postgres_server: Any, app_name: str
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **BOUNDED)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        proxy.blackhole("downstream")  # no reply reaches the client from now on
    # close() returned without the ROLLBACK's reply, and did not cut the connection; before,
    # it waited for the reply until the backstop cut it (evictions.timeout == 1)
    assert _stats(engine)["evictions"]["timeout"] == 0
    assert _pending(engine)
    # ... and the server has ended the transaction: the session is idle, not "idle in
    # transaction" (which would hold locks and the xmin horizon while pooled)
    assert _session_state(postgres_server, app_name) == ["idle"]
    proxy.clear()  # the held reply arrives; the next checkout reads it
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0


async def test_async_close_sends_the_rollback_without_waiting_for_the_reply(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any, app_name: str
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), **BOUNDED)
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        proxy.blackhole("downstream")
    assert _stats(engine)["evictions"]["timeout"] == 0
    assert _pending(engine)
    assert await asyncio.to_thread(_session_state, postgres_server, app_name) == ["idle"]
    proxy.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
    assert _stats(engine)["connects"] == 1


# --- faults while the reply is pending ----------------------------------------------------------


def test_connection_lost_before_the_reply_is_discarded_without_error(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **BOUNDED)
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
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), **BOUNDED)
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


def test_reply_that_never_comes_is_bounded_and_evicts(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **BOUNDED)
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


async def test_async_reply_that_never_comes_is_bounded_and_evicts(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), **BOUNDED)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        proxy.blackhole("downstream")
    with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.5):
        await engine.connect()  # awaited the socket (the event loop ran meanwhile), then gave up
    assert _stats(engine)["evictions"]["timeout"] == 1
    proxy.clear()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 3"))).scalar() == 3
    assert _stats(engine)["connects"] == 2


def test_backend_killed_after_close_next_caller_sees_no_error(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, **BOUNDED)
    for i in range(3):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert postgres_server.kill_connections(application_name=app_name) == 1
        with engine.connect() as conn:  # a read: retried or reconnected, never surfaced
            assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
    snap = _stats(engine)
    assert snap["give_ups"] == 0
    assert snap["disconnects"] >= 3


async def test_async_backend_killed_after_close_next_caller_sees_no_error(
    make_async_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_async_engine(postgres_server.url, **BOUNDED)
    for i in range(3):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert postgres_server.kill_connections(application_name=app_name) == 1
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT :i"), {"i": i})).scalar() == i
    assert _stats(engine)["give_ups"] == 0


# --- transaction semantics unchanged ------------------------------------------------------------


@pytest.fixture
def table(postgres_server: Any) -> str:
    name = "pg_deferred_rb"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY)")
        conn.execute(f"TRUNCATE {name}")
    return name


def test_uncommitted_work_is_rolled_back_before_the_next_use(
    make_engine: Any, postgres_server: Any, table: str
) -> None:
    engine = make_engine(postgres_server.url, **BOUNDED)
    with engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))  # never committed
    with engine.connect() as conn:  # same connection (pool of 1)
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
        conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT id FROM {table}")).scalars().all() == [2]
    assert _stats(engine)["connects"] == 1


async def test_async_uncommitted_work_is_rolled_back_before_the_next_use(
    make_async_engine: Any, postgres_server: Any, table: str
) -> None:
    engine = make_async_engine(postgres_server.url, **BOUNDED)
    async with engine.connect() as conn:
        await conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
    async with engine.connect() as conn:
        assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0
    assert _stats(engine)["connects"] == 1


def test_savepoints_and_explicit_transactions_unchanged(
    make_engine: Any, postgres_server: Any, table: str
) -> None:
    engine = make_engine(postgres_server.url, **BOUNDED)
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
            nested = conn.begin_nested()
            conn.execute(text(f"INSERT INTO {table} VALUES (2)"))
            nested.rollback()
        conn.execute(text(f"INSERT INTO {table} VALUES (3)"))
        nested = conn.begin_nested()
        conn.execute(text(f"INSERT INTO {table} VALUES (4)"))
        nested.commit()
        # closed with the transaction open: 3 and 4 are rolled back
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT id FROM {table} ORDER BY id")).scalars().all() == [1]
    assert _stats(engine)["connects"] == 1


def test_isolation_level_is_reset_at_return(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, **BOUNDED)
    with engine.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
        level = conn.execute(text("SHOW transaction_isolation")).scalar()
        assert level == "serializable"
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT 1"))
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
        assert conn.in_transaction()
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0


def test_server_side_cursor_left_open_at_close(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, **BOUNDED)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(
            text("SELECT generate_series(1, 10000)")
        )
        assert result.fetchmany(10) == [(i,) for i in range(1, 11)]
        # closed with the cursor open and unconsumed
    result.close()  # psycopg leaves a cursor of a busy/idle connection alone
    with engine.connect() as conn:
        streamed = conn.execution_options(stream_results=True).execute(
            text("SELECT generate_series(1, 3)")
        )
        assert streamed.scalars().all() == [1, 2, 3]
    snap = _stats(engine)
    assert snap["connects"] == 1
    assert snap["disconnects"] == 0


def test_orm_session_close_unchanged(make_engine: Any, postgres_server: Any, table: str) -> None:
    from sqlalchemy.orm import Session

    engine = make_engine(postgres_server.url, **BOUNDED)
    with Session(engine) as session:
        session.execute(text(f"INSERT INTO {table} VALUES (5)"))
    with Session(engine) as session:
        assert session.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
    assert _stats(engine)["connects"] == 1


# --- when psycopg's rollback() does more than a ROLLBACK, it runs as before ----------------------


def test_not_deferred_when_psycopg_would_do_more(postgres_server: Any) -> None:
    from poolguard.backends import postgres as pg

    with psycopg.connect(postgres_server.url) as conn:
        assert not pg.rollback_deferrable(conn)  # idle: nothing to end
        conn.execute("SELECT 1")
        assert pg.rollback_deferrable(conn)
        conn.execute("SELECT 1", prepare=True)  # now prepared: rollback() deallocates them
        assert not pg.rollback_deferrable(conn)
        conn.rollback()
        with conn.transaction():  # a psycopg transaction block owns the transaction
            assert not pg.rollback_deferrable(conn)
        with conn.pipeline():
            conn.execute("SELECT 1")
            assert not pg.rollback_deferrable(conn)
        conn.rollback()
        conn.execute("SELECT 1")
        pg.send_rollback(conn)
        assert pg.needs_reset(conn) is False  # busy with our ROLLBACK: nothing else to undo
        conn.pgconn.consume_input()
        while conn.pgconn.is_busy():
            time.sleep(0.001)
            conn.pgconn.consume_input()
        results = []
        while (result := conn.pgconn.get_result()) is not None:
            results.append(result)
        pg.rollback_settled(conn, results)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # usable, BEGIN sent again
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
