"""poolguard.create_engine / create_async_engine against a real PostgreSQL (no faults)."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

import poolguard
from poolguard.backends import postgres as pg

pytestmark = pytest.mark.postgres


def test_engine_is_a_real_sqlalchemy_engine(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, echo=False, pool_size=2)
    assert isinstance(engine, sqlalchemy.Engine)
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver == "psycopg"
    Session = sessionmaker(engine)
    with Session() as session:
        assert session.execute(text("SELECT 41 + 1")).scalar() == 42
    assert engine.pool.size() == 2  # type: ignore[attr-defined]


def test_url_from_database_url(
    monkeypatch: pytest.MonkeyPatch, postgres_server: Any, app_name: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_server.url.replace("postgresql://", "postgres://"))
    monkeypatch.setenv("POOLGUARD_QUERY_TIMEOUT", "750ms")
    engine = poolguard.create_engine(connect_args={"application_name": app_name})
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "750ms"
    finally:
        engine.dispose()


def test_server_side_timeouts_in_startup_options(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(
        postgres_server.url, query_timeout=2, lock_timeout=0.5, idle_in_transaction_timeout=3
    )
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "500ms"
        assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "3s"
        assert conn.execute(text("SHOW client_connection_check_interval")).scalar() == "1s"
        # Client-side socket options set by libpq from our keepalive parameters.
        fd = conn.connection.driver_connection.fileno()
        with socket.socket(fileno=os.dup(fd)) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000


def test_stats_and_gauges(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=3)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        snap = engine.pool.stats()
        assert snap["checked_out"] == 1
    snap = poolguard.stats(engine)
    assert snap["checked_out"] == 0
    assert snap["idle"] == 1
    assert snap["connects"] == 1
    assert snap["requests"] >= 2
    assert snap["acquire_wait_ms"]["count"] >= 1


def test_pool_exhaustion_message(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, max_overflow=0, acquire_timeout=0.3)
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(poolguard.PoolTimeout) as info:
            engine.connect()
        elapsed = time.monotonic() - started
    err = info.value
    assert isinstance(err, sqlalchemy.exc.TimeoutError)
    assert isinstance(err, TimeoutError)
    assert "1 checked out" in str(err)
    assert "POOLGUARD_POOL_SIZE" in str(err)
    assert postgres_server.password not in str(err)
    assert 0.25 <= elapsed < 2.0


def test_pool_timeout_respects_deadline(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, max_overflow=0, acquire_timeout=5)
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(poolguard.PoolTimeout), poolguard.deadline(0.3):
            engine.connect()
        assert time.monotonic() - started < 1.5


def test_fresh_connections_not_pinged_idle_ones_are(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, validate_idle=0.2)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with engine.connect() as conn:  # idle < 0.2 s: no ping
        conn.execute(text("SELECT 1"))
    assert poolguard.stats(engine)["validations"] == 0
    time.sleep(0.3)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert poolguard.stats(engine)["validations"] == 1


def test_reset_on_return_skips_idle_connections(
    make_engine: Any, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.connect():
        pass  # SQLAlchemy's first-connect dialect initialization rolls back on its own
    calls: list[str] = []
    original = psycopg.Connection.rollback

    def spy(self: psycopg.Connection[Any]) -> None:
        calls.append(self.info.transaction_status.name)
        original(self)

    monkeypatch.setattr(psycopg.Connection, "rollback", spy)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
    assert calls == []  # committed: no ROLLBACK round trip on return
    raw = engine.raw_connection()
    raw.cursor().execute("SELECT 1")  # leaves a transaction open
    raw.close()
    assert calls == ["INTRANS"]  # rolled back because libpq said INTRANS
    with engine.connect() as conn:
        status = pg.needs_reset(conn.connection.driver_connection)
        assert status is False


def test_lifetime_eviction_is_jittered(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, max_lifetime=0.3, max_idle=None, validate_idle=None)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    time.sleep(0.35)
    with engine.connect() as conn:
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert first != second
    assert poolguard.stats(engine)["evictions"]["lifetime"] == 1


def test_idle_eviction(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, max_idle=0.2, validate_idle=None, max_lifetime=60)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    time.sleep(0.3)
    with engine.connect() as conn:
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert first != second
    assert poolguard.stats(engine)["evictions"]["idle"] == 1


def test_execution_options_engine_keeps_the_guard(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url)
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:
        assert type(conn).__name__ == "GuardedConnection"
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_concurrent_threads(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=4, max_overflow=0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert poolguard.stats(engine)["checked_out"] == 0


async def test_async_engine_and_sessionmaker(make_async_engine: Any, postgres_server: Any) -> None:
    engine = make_async_engine(postgres_server.url, query_timeout=2)
    assert isinstance(engine, AsyncEngine)
    Session = async_sessionmaker(engine)
    async with Session() as session:
        assert (await session.execute(text("SELECT 7"))).scalar() == 7
        assert (await session.execute(text("SHOW statement_timeout"))).scalar() == "2s"
    assert poolguard.stats(engine)["connects"] == 1


def test_run_transaction_accepts_engine_session_and_maker(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url)
    Session = sessionmaker(engine)
    assert poolguard.run_transaction(engine, lambda c: c.execute(text("SELECT 1")).scalar()) == 1
    assert poolguard.run_transaction(Session, lambda s: s.execute(text("SELECT 2")).scalar()) == 2
    with Session() as session:
        assert (
            poolguard.run_transaction(session, lambda s: s.execute(text("SELECT 3")).scalar()) == 3
        )


def test_unsupported_url_is_a_config_error() -> None:
    # mysql:// is supported since the MySQL integration (tests/integration/mysql).
    with pytest.raises(poolguard.ConfigError):
        poolguard.create_engine("mssql+pyodbc://u:p@localhost/db")


def test_wrong_password_fails_fast_without_leaking_it(
    make_engine: Any, postgres_server: Any
) -> None:
    secret = "definitely-wrong-pw"
    url = postgres_server.url.replace(f":{postgres_server.password}@", f":{secret}@")
    engine = make_engine(url, retry_attempts=5)
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        engine.connect()
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    snap = poolguard.stats(engine)
    assert snap["retries"] == 0  # authentication failures are permanent
    assert secret not in str(snap)


def test_sqlalchemy_pool_logs_stay_under_sqlalchemy(
    make_engine: Any, postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_server.url)
    with caplog.at_level("DEBUG"), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert not [r for r in caplog.records if r.name.startswith("poolguard.integrations")]


def test_dispose_keeps_the_guard(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=2)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert poolguard.stats(engine)["checked_out"] == 1
    assert type(engine.pool).__name__ == "GuardedQueuePool"
    assert poolguard.stats(engine)["connects"] == 2


def test_validate_always_still_skips_fresh_connections(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, validate_idle=0)
    with engine.connect() as conn:  # new connection: no ping
        conn.execute(text("SELECT 1"))
    assert poolguard.stats(engine)["validations"] == 0
    with engine.connect() as conn:  # reused: validate_idle=0 means always
        conn.execute(text("SELECT 1"))
    assert poolguard.stats(engine)["validations"] == 1
