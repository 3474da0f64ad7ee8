"""Sessions killed server-side (``KILL CONNECTION``): idle, mid-query, mid-transaction."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

from .conftest import connection_id, kill, kill_later

pytestmark = [pytest.mark.mysql, pytest.mark.chaos]


def _table(engine: Any, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY, n int)"))
        conn.execute(text(f"DELETE FROM {name}"))


def test_killed_while_idle_reads_succeed(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, pool_size=3, validate_idle=None)
    conns = [engine.connect() for _ in range(3)]
    ids = [connection_id(conn) for conn in conns]
    for conn in conns:
        conn.close()
    kill(mysql_server, *ids)
    for i in range(6):  # every pooled connection is dead; nobody sees an error
        with engine.connect() as conn:
            assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
    snap = poolguard.stats(engine)
    assert snap["disconnects"] >= 1
    assert snap["give_ups"] == 0


def test_killed_mid_query_read_is_retried(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url)
    with engine.connect() as conn:
        victim = connection_id(conn)
        conn.commit()
        timer = kill_later(mysql_server, victim, 0.2)
        started = time.monotonic()
        # first statement of the transaction, a read: re-run on a fresh connection
        assert conn.execute(text("SELECT 7 FROM (SELECT SLEEP(0.6)) AS s")).scalar() == 7
        timer.join()
        assert time.monotonic() - started < 5
        assert connection_id(conn) != victim
        conn.commit()
    assert poolguard.stats(engine)["retries_by_reason"].get("lost_connection", 0) >= 1


def test_killed_mid_query_autocommit_write_is_ambiguous(
    make_engine: Any, mysql_server: Any
) -> None:
    engine = make_engine(mysql_server.url, isolation_level="AUTOCOMMIT")
    _table(engine, "my_kill_w")
    with engine.connect() as conn:
        timer = kill_later(mysql_server, connection_id(conn), 0.2)
        with pytest.raises(poolguard.AmbiguousResultError) as info:
            conn.execute(text("INSERT INTO my_kill_w SELECT 1, SLEEP(0.6)"))
        timer.join()
    err = info.value
    assert isinstance(err, sqlalchemy.exc.OperationalError)
    assert err.__cause__ is not None  # chained to SQLAlchemy's wrapped driver error
    assert poolguard.stats(engine)["ambiguous"] == 1


def test_killed_mid_transaction_is_not_retried_but_run_transaction_reruns(
    make_engine: Any, mysql_server: Any
) -> None:
    engine = make_engine(mysql_server.url)
    _table(engine, "my_kill_tx")
    # The statement guard: a read after a write in the same transaction is LATER: never moved.
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO my_kill_tx VALUES (1, 0)"))
        timer = kill_later(mysql_server, connection_id(conn), 0.2)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text("SELECT SLEEP(0.6)"))
        timer.join()
        conn.rollback()
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO my_kill_tx VALUES (2, 0)"))
        if len(calls) == 1:
            kill_later(mysql_server, connection_id(conn), 0.2).join()
            time.sleep(0.1)
        conn.execute(text("UPDATE my_kill_tx SET n = n + 1 WHERE id = 2"))

    poolguard.run_transaction(engine, unit)
    assert calls == [1, 1]  # the killed attempt was rolled back by the server, then re-run
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, n FROM my_kill_tx")).all() == [(2, 1)]


def test_a_read_after_a_read_in_one_transaction_is_not_moved(
    make_engine: Any, mysql_server: Any
) -> None:
    # MariaDB does not flag a read-only transaction in its status bits; poolguard remembers
    # that this transaction already ran a statement, so the second read is not moved to a
    # fresh connection (it would silently read another snapshot).
    engine = make_engine(mysql_server.url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        timer = kill_later(mysql_server, connection_id(conn), 0.2)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text("SELECT SLEEP(0.6)"))
        timer.join()
    assert poolguard.stats(engine)["retries"] == 0


async def test_async_killed_mid_query_read_is_retried(
    make_async_engine: Any, mysql_server: Any
) -> None:
    import asyncio

    engine = make_async_engine(mysql_server.url)
    async with engine.connect() as conn:
        victim = int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar())
        await conn.commit()
        loop = asyncio.get_running_loop()
        killing = loop.run_in_executor(None, lambda: (time.sleep(0.2), kill(mysql_server, victim)))
        result = await conn.execute(text("SELECT 7 FROM (SELECT SLEEP(0.6)) AS s"))
        assert result.scalar() == 7
        await killing
    assert poolguard.stats(engine)["retries_by_reason"].get("lost_connection", 0) >= 1


# An AUTOCOMMIT Connection meeting a killed session: retried on a fresh connection that gets
# AUTOCOMMIT again (it never moved before), and the pool undoes it on return.
def test_mysql_autocommit_read_retried(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, pool_size=1, validate_idle=None)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        before = connection_id(conn)
        kill(mysql_server, before)
        assert connection_id(conn) != before  # retried on a fresh connection
        assert conn.execute(text("SELECT @@autocommit")).scalar() == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT @@autocommit")).scalar() == 0
    assert poolguard.stats(engine)["give_ups"] == 0
