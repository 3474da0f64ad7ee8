"""Live reconfiguration (poolguard.reconfigure, reload_on_sighup) of PostgreSQL engines."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

from .conftest import both_async_drivers

pytestmark = pytest.mark.postgres

#: Only to fail instead of hanging, never a performance bound.
HANG_GUARD = 20.0


def _until(predicate: Any) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, "condition never became true"
        time.sleep(0.01)


def _running(engine: Any, app_name: str, sql: str) -> bool:
    """Is ``sql`` running right now in a session of this test (seen from another session)?"""
    url = engine.url.set(drivername="postgresql+psycopg")
    watcher = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with watcher.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :app AND state = 'active' AND query = :sql"
                ),
                {"app": app_name, "sql": sql},
            ).scalar()
        return bool(found)
    finally:
        watcher.dispose()


def _statement_timeout(conn: Any) -> str:
    return str(conn.execute(text("SHOW statement_timeout")).scalar())


def test_query_timeout_change_applies_to_the_next_checkout(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, max_overflow=0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_sleep(0.5)")).scalar() == 1  # no timeout
    changed = poolguard.reconfigure(engine, query_timeout="200ms")
    assert changed == {"query_timeout": (None, 0.2)}
    with engine.connect() as conn:
        assert _statement_timeout(conn) == "200ms"
        with pytest.raises(poolguard.QueryTimeout):
            conn.execute(text("SELECT pg_sleep(2)"))
    snap = poolguard.stats(engine)
    assert snap["reconfigured"] == 1
    assert snap["settings"]["query_timeout"] == 0.2
    # And back: the timeout is gone again (the session was opened with it: it is replaced).
    poolguard.reconfigure(engine, query_timeout=None)
    with engine.connect() as conn:
        assert _statement_timeout(conn) == "0"
        assert conn.execute(text("SELECT 1 FROM pg_sleep(0.5)")).scalar() == 1


def test_a_timeout_set_at_creation_can_be_turned_off(
    make_engine: Any, postgres_server: Any
) -> None:
    # The engine's connect parameters carry it (libpq options): new sessions must not.
    engine = make_engine(postgres_server.url, pool_size=1, max_overflow=0, query_timeout=5)
    with engine.connect() as conn:
        assert _statement_timeout(conn) == "5s"
    poolguard.reconfigure(engine, query_timeout="off")
    with engine.connect() as conn:
        assert _statement_timeout(conn) == "0"
    assert poolguard.stats(engine)["reconfigured_evictions"] == 1


@both_async_drivers
async def test_query_timeout_change_on_an_async_engine(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(postgres_server.url, pool_size=1, max_overflow=0, query_timeout=5)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1 FROM pg_sleep(0.5)"))).scalar() == 1
    poolguard.reconfigure(engine, query_timeout="200ms")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "200ms"
        with pytest.raises(poolguard.QueryTimeout):
            await conn.execute(text("SELECT pg_sleep(2)"))
    assert poolguard.stats(engine)["evictions"]  # the old session was replaced, not reused


def test_a_statement_in_flight_keeps_its_timeout(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, pool_size=2)
    sql = "SELECT 1 FROM pg_sleep(1)"
    results: list[Any] = []

    def slow() -> None:
        try:
            with engine.connect() as conn:
                results.append(conn.execute(text(sql)).scalar())
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    _until(lambda: _running(engine, app_name, sql))
    poolguard.reconfigure(engine, query_timeout="200ms")
    thread.join()
    assert results == [1]  # began with no timeout: finished with none
    with engine.connect() as conn, pytest.raises(poolguard.QueryTimeout):
        conn.execute(text(sql))  # began after: under the new one


def test_retry_attempts_change_is_seen_by_the_next_operation(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, retry_attempts=3)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        assert postgres_server.kill_connections(application_name=app_name) == 1
        assert conn.execute(text("SELECT 2")).scalar() == 2  # retried on a new session
        conn.commit()
    assert poolguard.stats(engine)["retries"] == 1
    poolguard.reconfigure(engine, retry_attempts=1)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        assert postgres_server.kill_connections(application_name=app_name) == 1
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.execute(text("SELECT 2"))  # the same fault, no retry any more
    assert poolguard.stats(engine)["retries"] == 1


def test_run_transaction_uses_the_new_policy(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, retry_attempts=3)
    runs: list[int] = []

    def unit(conn: Any) -> int:
        runs.append(1)
        if len(runs) == 1:
            postgres_server.kill_connections(application_name=app_name)
        return int(conn.execute(text("SELECT 3")).scalar())

    assert poolguard.run_transaction(engine, unit) == 3  # policy cached by the first call
    poolguard.reconfigure(engine, retry_attempts=1)
    runs.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        poolguard.run_transaction(engine, unit)
    assert len(runs) == 1


def test_a_bad_value_changes_nothing(
    make_engine: Any, postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_server.url, query_timeout=5, retry_attempts=3)
    before = poolguard.stats(engine)["settings"]
    with pytest.raises(poolguard.ConfigError, match="retry_attempts"):
        poolguard.reconfigure(engine, query_timeout="200ms", retry_attempts=0)
    with pytest.raises(poolguard.ConfigError, match="pool_size"):
        poolguard.reconfigure(engine, query_timeout="200ms", pool_size=3)
    assert poolguard.stats(engine)["settings"] == before
    assert poolguard.stats(engine)["reconfigured"] == 0
    with engine.connect() as conn:
        assert _statement_timeout(conn) == "5s"
        assert conn.execute(text("SELECT 1 FROM pg_sleep(0.5)")).scalar() == 1


def test_the_change_is_logged_without_the_password(
    make_engine: Any, postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_server.url)
    with caplog.at_level(logging.INFO, logger="poolguard"):
        poolguard.reconfigure(engine, query_timeout=2, retry_attempts=5)
    records = [r for r in caplog.records if "reconfigured" in r.getMessage()]
    assert len(records) == 1
    assert records[0].name == "poolguard.postgres"
    message = records[0].getMessage()
    assert "query_timeout: off -> 2s" in message
    assert "retry_attempts: 3 -> 5" in message
    password = sqlalchemy.engine.make_url(postgres_server.url).password
    if password:
        assert password not in message


# --- SIGHUP ------------------------------------------------------------------------------------


@pytest.fixture
def sighup() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_reloads_the_environment(
    make_engine: Any,
    postgres_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    sighup: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chained: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: chained.append(signum))
    monkeypatch.delenv("POOLGUARD_QUERY_TIMEOUT", raising=False)
    engine = make_engine(postgres_server.url, pool_size=1, max_overflow=0, retry_attempts=4)
    poolguard.reload_on_sighup(engine)
    monkeypatch.setenv("POOLGUARD_QUERY_TIMEOUT", "200ms")
    os.kill(os.getpid(), signal.SIGHUP)
    _until(lambda: poolguard.stats(engine)["reconfigured"] == 1)
    assert chained == [signal.SIGHUP]  # the handler installed before still runs
    settings = poolguard.stats(engine)["settings"]
    assert settings["query_timeout"] == 0.2
    assert settings["retry_attempts"] == 4  # given as a keyword, not in the environment
    with engine.connect() as conn, pytest.raises(poolguard.QueryTimeout):
        conn.execute(text("SELECT pg_sleep(2)"))
    # A bad value: logged with the variable's name, nothing applied.
    monkeypatch.setenv("POOLGUARD_QUERY_TIMEOUT", "soon")
    monkeypatch.setenv("POOLGUARD_RETRY_ATTEMPTS", "2")
    with caplog.at_level(logging.ERROR, logger="poolguard"):
        os.kill(os.getpid(), signal.SIGHUP)
        _until(lambda: len(chained) == 2)
    assert any("POOLGUARD_QUERY_TIMEOUT" in r.getMessage() for r in caplog.records)
    snap = poolguard.stats(engine)
    assert snap["reconfigured"] == 1
    assert snap["settings"]["query_timeout"] == 0.2
    assert snap["settings"]["retry_attempts"] == 4
