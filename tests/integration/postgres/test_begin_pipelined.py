"""A transaction's BEGIN goes out with its first statement (one round trip, not two).

psycopg (autocommit off) sends BEGIN and waits for its reply before the first statement; the
guarded engine's connections send both in one flight (libpq pipeline mode, one Sync). What must
not change: the statement's errors, the transaction it opens (isolation level included), the
retry rules under faults (a read first statement is retried, a write that was sent is not),
prepared statements, executemany and server-side cursors.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres]

SMALL = {"pool_size": 1, "max_overflow": 0}


def _flights(proxy: Any, fn: Any, n: int = 10) -> float:
    before = proxy.flights
    for _ in range(n):
        fn()
    return (proxy.flights - before) / n


# Counted on units that end with a COMMIT, whose reply is waited for: every flight is then a
# round trip. (The ROLLBACK of close() is sent without waiting; its flight merges with the next
# request's or not depending on when its reply is relayed, see test_deferred_rollback.py.)


def test_begin_and_first_statement_are_one_round_trip(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **SMALL)

    def one() -> None:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT :x"), {"x": 1}).scalar() == 1

    def two() -> None:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            conn.execute(text("SELECT 2"))

    for unit in (one, two):
        _flights(proxy, unit)  # psycopg prepares repeated statements (a flight each, once)
    # BEGIN + SELECT, COMMIT; psycopg alone: BEGIN, SELECT, COMMIT = 3
    assert _flights(proxy, one) == 2
    assert _flights(proxy, two) == 3  # BEGIN + SELECT 1, SELECT 2, COMMIT (was 4)


async def test_async_begin_and_first_statement_are_one_round_trip(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), **SMALL)

    async def one() -> None:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT :x"), {"x": 1})).scalar() == 1

    for _ in range(10):
        await one()
    before = proxy.flights
    for _ in range(10):
        await one()
    assert (proxy.flights - before) / 10 == 2


@pytest.fixture
def table(postgres_server: Any) -> str:
    name = "pg_begin_piped"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY)")
        conn.execute(f"TRUNCATE {name}")
    return name


def test_first_statement_error_surfaces_as_before(
    make_engine: Any, postgres_server: Any, table: str
) -> None:
    engine = make_engine(postgres_server.url, **SMALL)
    with engine.connect() as conn:
        with pytest.raises(sqlalchemy.exc.ProgrammingError) as info:
            conn.execute(text("SELECT * FROM no_such_table_here"))
        assert isinstance(info.value.orig, psycopg.errors.UndefinedTable)
        # the transaction was opened (BEGIN ran) and is now failed, as with psycopg alone
        with pytest.raises(sqlalchemy.exc.InternalError) as failed:
            conn.execute(text("SELECT 1"))
        assert isinstance(failed.value.orig, psycopg.errors.InFailedSqlTransaction)
        conn.rollback()
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
    snap = poolguard.stats(engine)
    assert snap["connects"] == 1
    assert snap["retries"] == 0


def test_first_statement_opens_the_transaction_with_its_isolation_level(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, isolation_level="REPEATABLE READ", **SMALL)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "repeatable read"
        first = conn.execute(text("SELECT now()")).scalar()
        assert conn.execute(text("SELECT now()")).scalar() == first  # one transaction
        xid = conn.execute(text("SELECT txid_current()")).scalar()
        assert conn.execute(text("SELECT txid_current()")).scalar() == xid


def test_prepared_statements_and_executemany(
    make_engine: Any, postgres_server: Any, table: str
) -> None:
    engine = make_engine(postgres_server.url, **SMALL)
    # committed transactions keep psycopg's prepare counts: the first statement of a later
    # transaction is prepared in the same flight as its BEGIN
    for i in range(10):
        with engine.begin() as conn:
            assert conn.execute(text("SELECT :i + 0"), {"i": i}).scalar() == i
    with engine.begin() as conn:  # executemany as the first statement: psycopg's own path
        conn.execute(text(f"INSERT INTO {table} VALUES (:i)"), [{"i": i} for i in range(20)])
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 20
        rows = conn.execution_options(stream_results=True).execute(
            text(f"SELECT id FROM {table} ORDER BY id")
        )
        assert rows.scalars().all() == list(range(20))
    assert poolguard.stats(engine)["connects"] == 1


def test_killed_during_a_first_statement_write_is_not_retried(
    make_engine: Any, postgres_server: Any, app_name: str, table: str
) -> None:
    engine = make_engine(postgres_server.url, **SMALL)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        timer = threading.Timer(
            0.2, lambda: postgres_server.kill_connections(application_name=app_name)
        )
        timer.start()
        # sent with its BEGIN: a write that reached the server is never re-run
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text(f"INSERT INTO {table} SELECT 1 FROM pg_sleep(0.6)"))
        timer.join()
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
    assert poolguard.stats(engine)["retries"] == 0


def test_killed_during_a_first_statement_read_is_retried(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, **SMALL)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        timer = threading.Timer(
            0.2, lambda: postgres_server.kill_connections(application_name=app_name)
        )
        timer.start()
        assert conn.execute(text("SELECT 7 FROM pg_sleep(0.6)")).scalar() == 7
        timer.join()
    assert poolguard.stats(engine)["retries"] >= 1


def test_frozen_during_the_pipelined_statement_bounded_by_deadline(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **SMALL)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        proxy.blackhole()
        with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.5):
            conn.execute(text("SELECT 1"))  # BEGIN + SELECT in flight, no reply
    proxy.clear()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 2")).scalar() == 2


def test_user_cursor_factory_is_kept(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(
        postgres_server.url, connect_args={"cursor_factory": psycopg.ClientCursor}, **SMALL
    )
    with engine.connect() as conn:
        assert conn.execute(text("SELECT :x"), {"x": 3}).scalar() == 3
        cursor = conn.connection.dbapi_connection.cursor()
        assert type(cursor) is psycopg.ClientCursor


def test_parameter_that_does_not_adapt_leaves_the_transaction_open_as_before(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, **SMALL)
    with engine.connect() as conn:
        with pytest.raises(sqlalchemy.exc.ProgrammingError) as info:
            conn.execute(text("SELECT :x"), {"x": object()})
        assert "cannot adapt" in str(info.value.orig)
        driver = conn.connection.dbapi_connection
        assert driver.pgconn.pipeline_status == 0  # back to normal mode
        # psycopg alone had run BEGIN before adapting: the transaction is open, not failed
        assert driver.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute(text("SELECT 5")).scalar() == 5
    assert poolguard.stats(engine)["connects"] == 1
