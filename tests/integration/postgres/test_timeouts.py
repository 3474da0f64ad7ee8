"""Server-side timeouts firing, and the error types callers see."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

pytestmark = pytest.mark.postgres


def test_statement_timeout_is_a_query_timeout(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, query_timeout=0.3)
    with engine.connect() as conn:
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout) as info:
            conn.execute(text("SELECT pg_sleep(2)"))
        elapsed = time.monotonic() - started
        conn.rollback()
        assert conn.execute(text("SELECT 1")).scalar() == 1  # the connection survived
    err = info.value
    assert isinstance(err, sqlalchemy.exc.OperationalError)
    assert isinstance(err, TimeoutError)
    assert isinstance(err.orig, psycopg.errors.QueryCanceled)
    assert isinstance(err.__cause__, sqlalchemy.exc.OperationalError)
    assert elapsed < 1.5
    assert poolguard.stats(engine)["retries"] == 0  # a timed-out statement is never re-run


def test_lock_timeout_is_an_operational_error_with_55p03(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, lock_timeout=0.2, retry_attempts=1)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_lock_t (id int PRIMARY KEY, v int)"))
        conn.execute(text("INSERT INTO pg_lock_t VALUES (1, 0) ON CONFLICT DO NOTHING"))
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(text("UPDATE pg_lock_t SET v = v + 1 WHERE id = 1"))
        with pytest.raises(sqlalchemy.exc.OperationalError) as info:
            waiter.execute(text("UPDATE pg_lock_t SET v = v + 1 WHERE id = 1"))
        holder.rollback()
        waiter.rollback()
    assert isinstance(info.value.orig, psycopg.errors.LockNotAvailable)


def test_lock_timeout_is_retried_by_run_transaction(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, lock_timeout=0.2, retry_attempts=5)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_lock_r (id int PRIMARY KEY, v int)"))
        conn.execute(text("INSERT INTO pg_lock_r VALUES (1, 0) ON CONFLICT DO NOTHING"))
    holder = engine.connect()
    holder.execute(text("UPDATE pg_lock_r SET v = v + 1 WHERE id = 1"))
    runs: list[int] = []

    def unit(conn: Any) -> None:
        runs.append(1)
        if len(runs) == 2:
            holder.rollback()  # the lock goes away before the second attempt
        conn.execute(text("UPDATE pg_lock_r SET v = v + 10 WHERE id = 1"))

    poolguard.run_transaction(engine, unit)
    holder.close()
    assert len(runs) == 2
    assert poolguard.stats(engine)["retries_by_reason"]["lock_not_available"] == 1


def test_idle_in_transaction_timeout_is_a_transaction_timeout(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, idle_in_transaction_timeout=0.2)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        time.sleep(0.5)
        with pytest.raises(poolguard.TransactionTimeout) as info:
            conn.execute(text("SELECT 1"))
        conn.rollback()
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_client_transaction_timeout(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, transaction_timeout=0.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(poolguard.TransactionTimeout):
            conn.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 1.0
        conn.rollback()
