"""Backends killed server-side (pg_terminate_backend): idle, mid-query, mid-transaction."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def _kill_later(server: Any, app_name: str, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: server.kill_connections(application_name=app_name))
    timer.start()
    return timer


def test_killed_while_idle_reads_succeed(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, pool_size=3)
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
        conn.close()
    assert postgres_server.kill_connections(application_name=app_name) == 3
    for i in range(6):  # every pooled connection is dead; nobody sees an error
        with engine.connect() as conn:
            assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
    snap = poolguard.stats(engine)
    assert snap["disconnects"] >= 1
    assert snap["give_ups"] == 0


def test_killed_mid_query_read_is_retried(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        timer = _kill_later(postgres_server, app_name, 0.2)
        started = time.monotonic()
        # first statement of the transaction, a read: re-run on a fresh connection
        assert conn.execute(text("SELECT 7 FROM pg_sleep(0.6)")).scalar() == 7
        timer.join()
        assert time.monotonic() - started < 5
        conn.commit()
    assert poolguard.stats(engine)["retries_by_reason"].get("admin_shutdown", 0) >= 1


def test_killed_mid_query_autocommit_write_is_ambiguous(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_kill_w (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM pg_kill_w"))
        timer = _kill_later(postgres_server, app_name, 0.2)
        with pytest.raises(poolguard.AmbiguousResultError) as info:
            conn.execute(text("INSERT INTO pg_kill_w SELECT 1 FROM pg_sleep(0.6)"))
        timer.join()
    err = info.value
    assert isinstance(err, sqlalchemy.exc.OperationalError)
    assert err.__cause__ is not None  # chained to SQLAlchemy's wrapped driver error
    assert poolguard.stats(engine)["ambiguous"] == 1


def test_killed_mid_transaction_is_not_retried_by_the_statement_guard(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_kill_t (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM pg_kill_t"))
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO pg_kill_t VALUES (1)"))
        postgres_server.kill_connections(application_name=app_name)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text("SELECT count(*) FROM pg_kill_t"))  # LATER: the insert is gone
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_kill_t")).scalar() == 0


def test_run_transaction_reruns_a_unit_killed_mid_transaction(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_kill_u (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM pg_kill_u"))
    runs: list[int] = []

    def unit(conn: Any) -> int:
        runs.append(1)
        conn.execute(text("INSERT INTO pg_kill_u VALUES (1)"))
        if len(runs) == 1:
            postgres_server.kill_connections(application_name=app_name)
        return int(conn.execute(text("SELECT count(*) FROM pg_kill_u")).scalar())

    assert poolguard.run_transaction(engine, unit) == 1
    assert len(runs) == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_kill_u")).scalar() == 1


def test_kill_marks_older_connections_suspect_not_dropped(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, pool_size=3, validate_idle=60)
    conns = [engine.connect() for _ in range(3)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
    victim = conns[0].execute(text("SELECT pg_backend_pid()")).scalar()
    for conn in conns:
        conn.close()
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [victim])
    time.sleep(0.1)
    pids = set()
    for _ in range(3):  # the dead one fails (57P01 marks the rest suspect); all are validated
        with engine.connect() as conn:
            pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
    snap = poolguard.stats(engine)
    assert victim not in pids
    assert snap["validations"] >= 1
    assert snap["evictions"]["validation"] == 0  # the healthy ones passed validation and stayed


def test_write_marked_idempotent_is_retried(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_kill_i (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM pg_kill_i"))
        timer = _kill_later(postgres_server, app_name, 0.2)
        upsert = text("INSERT INTO pg_kill_i SELECT 1 FROM pg_sleep(0.6) ON CONFLICT DO NOTHING")
        conn.execution_options(idempotent=True).execute(upsert)
        timer.join()
        assert conn.execute(text("SELECT count(*) FROM pg_kill_i")).scalar() == 1


def test_orm_session_first_statement_moves_to_a_fresh_connection(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, validate_idle=None)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS pg_kill_s (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM pg_kill_s"))
    Session = sessionmaker(engine)
    with Session() as session:
        session.execute(text("SELECT 1"))
        session.commit()
        postgres_server.kill_connections(application_name=app_name)
        # the session's next transaction starts on the dead connection: its first statement
        # (a read) is re-run on a fresh one, and the rest of the transaction follows it there
        assert session.execute(text("SELECT count(*) FROM pg_kill_s")).scalar() == 0
        session.execute(text("INSERT INTO pg_kill_s VALUES (1)"))
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_kill_s")).scalar() == 1
    assert poolguard.stats(engine)["retries"] == 1


def test_connection_level_isolation_follows_the_swap(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="SERIALIZABLE")
        conn.execute(text("SELECT 1"))
        conn.commit()
        postgres_server.kill_connections(application_name=app_name)
        # Retried on a fresh connection, which must run at SERIALIZABLE too, not READ COMMITTED
        # (until the isolation level was set again on it, this surfaced the error instead).
        level = conn.execute(text("SHOW transaction_isolation")).scalar()
        assert level == "serializable"
    with engine.connect() as conn:  # returned to the pool: SQLAlchemy's reset undid it
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    assert poolguard.stats(engine)["retries"] == 1
