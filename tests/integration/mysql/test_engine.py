"""poolguard engines on MariaDB: drivers, server-side timeouts, validation, reset, pool limits."""

from __future__ import annotations

import time
from typing import Any

import pymysql
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

import poolguard
from poolguard.backends.mysql import is_idempotent

from .conftest import connection_id, kill

pytestmark = pytest.mark.mysql


def test_urls_pick_pymysql_and_aiomysql(make_engine: Any, make_async_engine: Any) -> None:
    url = "mysql://u:p@127.0.0.1:1/db"
    assert make_engine(url).dialect.driver == "pymysql"
    assert make_async_engine(url).dialect.driver == "aiomysql"
    maria = make_engine("mariadb://u:p@127.0.0.1:1/db")
    assert (maria.dialect.name, maria.dialect.driver) == ("mariadb", "pymysql")


def test_env_url(monkeypatch: pytest.MonkeyPatch, mysql_server: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", mysql_server.url)
    engine = poolguard.create_engine()
    try:
        with engine.connect() as conn:
            assert "MariaDB" in conn.execute(text("SELECT VERSION()")).scalar()
    finally:
        engine.dispose()


def test_session_timeouts_follow_the_flavour(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(
        mysql_server.url, query_timeout=1.5, lock_timeout=2.2, idle_in_transaction_timeout=30
    )
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT @@max_statement_time, @@innodb_lock_wait_timeout,"
                " @@idle_transaction_timeout"
            )
        ).one()
    # MariaDB: seconds (fractional) for any statement; InnoDB lock wait: whole seconds, rounded up
    assert (float(row[0]), int(row[1]), int(row[2])) == (1.5, 3, 30)


def test_max_statement_time_is_a_query_timeout(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, query_timeout=0.3)
    with engine.connect() as conn:
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout) as info:
            conn.execute(text("SELECT SLEEP(2)"))
        assert time.monotonic() - started < 0.3 + 1.5
        assert isinstance(info.value, sqlalchemy.exc.OperationalError)
        assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)
        conn.rollback()
        assert conn.execute(text("SELECT 1")).scalar() == 1  # server-side: connection kept
    snap = poolguard.stats(engine)
    assert snap["retries"] == 0
    assert snap["disconnects"] == 0


def test_validation_after_idle_replaces_a_killed_connection(
    make_engine: Any, mysql_server: Any
) -> None:
    engine = make_engine(mysql_server.url, pool_size=1, validate_idle=0.05)
    with engine.connect() as conn:
        first = connection_id(conn)
    kill(mysql_server, first)
    time.sleep(0.1)
    with engine.connect() as conn:
        assert connection_id(conn) != first
    snap = poolguard.stats(engine)
    assert snap["validation_failures"] == 1
    assert snap["retries"] == 0  # found at checkout: no statement had to be retried


def test_reset_on_return_ends_a_read_snapshot(make_engine: Any, mysql_server: Any) -> None:
    # A plain SELECT with autocommit off opens a read view without SERVER_STATUS_IN_TRANS:
    # returning the connection must still roll back, or the next user reads a stale snapshot.
    engine = make_engine(mysql_server.url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS my_snap (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM my_snap"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM my_snap")).scalar() == 0
        conn.close()  # no commit: the pool resets it
    other = make_engine(mysql_server.url, pool_size=1)
    with other.begin() as conn:
        conn.execute(text("INSERT INTO my_snap VALUES (1)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM my_snap")).scalar() == 1


def test_pool_exhaustion_is_a_pool_timeout(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, pool_size=1, max_overflow=0, acquire_timeout=0.3)
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(poolguard.PoolTimeout) as info:
            engine.connect()
        assert time.monotonic() - started < 0.3 + 1.0
    assert isinstance(info.value, sqlalchemy.exc.TimeoutError)
    assert "1 checked out" in str(info.value)


def test_wrong_password_fails_fast_without_leaking_it(make_engine: Any, mysql_server: Any) -> None:
    secret = "definitely-wrong-pw"
    url = mysql_server.url.replace(f":{mysql_server.password}@", f":{secret}@")
    engine = make_engine(url, retry_attempts=5)
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        engine.connect()
    assert isinstance(info.value.orig, pymysql.err.OperationalError)
    assert info.value.orig.args[0] == 1045
    assert secret not in str(info.value)
    assert poolguard.stats(engine)["retries"] == 0


def test_orm_session_and_lock_in_share_mode_is_not_retried(
    make_engine: Any, mysql_server: Any
) -> None:
    engine = make_engine(mysql_server.url)
    maker = sessionmaker(engine)
    with maker() as session:
        assert session.execute(text("SELECT 2")).scalar() == 2
    assert not is_idempotent("SELECT 1 FROM t LOCK IN SHARE MODE")


def test_resolve_ambiguous_is_postgres_only(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url)
    with pytest.raises(poolguard.ConfigError, match="PostgreSQL"):
        poolguard.run_transaction(engine, lambda conn: None, resolve_ambiguous=True)


async def test_async_validation_after_idle_uses_the_driver_ping(
    make_async_engine: Any, mysql_server: Any
) -> None:
    engine = make_async_engine(mysql_server.url, pool_size=1, validate_idle=0.05)
    async with engine.connect() as conn:
        first = int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar())
    kill(mysql_server, first)
    time.sleep(0.1)
    async with engine.connect() as conn:
        assert int((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar()) != first
    snap = poolguard.stats(engine)
    assert snap["validations"] == 1
    assert snap["validation_failures"] == 1
    assert snap["retries"] == 0


def test_client_transaction_timeout_cuts_a_pymysql_socket(
    make_engine: Any, mysql_server: Any
) -> None:
    # No server variable bounds a whole MySQL transaction: the watchdog does, on conn._sock.
    engine = make_engine(mysql_server.url, transaction_timeout=0.6)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(poolguard.TransactionTimeout) as info:
            conn.execute(text("SELECT SLEEP(2)"))
        assert time.monotonic() - started < 0.6 + 0.5
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    with engine.connect() as conn:  # the cut connection was discarded, not pooled
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert poolguard.stats(engine)["evictions"]["timeout"] == 1
