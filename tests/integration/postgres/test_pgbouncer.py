"""PgBouncer in transaction pooling: timeouts via SET LOCAL, no session state, no prepares."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.pgbouncer]


def test_timeouts_are_transaction_local(make_engine: Any, pgbouncer_server: Any) -> None:
    engine = make_engine(pgbouncer_server.url, pgbouncer="on", query_timeout=0.3, lock_timeout=0.2)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "300ms"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "200ms"
        conn.commit()
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as conn:  # outside a transaction: nothing leaked into the session
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"


def test_statement_timeout_fires_on_the_server(make_engine: Any, pgbouncer_server: Any) -> None:
    engine = make_engine(pgbouncer_server.url, pgbouncer="on", query_timeout=0.3)
    with engine.connect() as conn:
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout):
            conn.execute(text("SELECT pg_sleep(3)"))
        assert time.monotonic() - started < 0.3 + 0.5  # before the client backstop
        conn.rollback()
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert poolguard.stats(engine)["evictions"]["timeout"] == 0


def test_many_clients_repeated_statements(make_engine: Any, pgbouncer_server: Any) -> None:
    engine = make_engine(pgbouncer_server.url, pgbouncer="on", pool_size=8, query_timeout=2)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):  # past psycopg's prepare_threshold: must not prepare
                with engine.begin() as conn:
                    value = conn.execute(text("SELECT :a + :b"), {"a": n, "b": i}).scalar()
                    assert value == n + i
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_timeouts_also_apply_with_connection_level_isolation(
    make_engine: Any, pgbouncer_server: Any
) -> None:
    engine = make_engine(pgbouncer_server.url, pgbouncer="on", query_timeout=0.4)
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    with serializable.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "400ms"
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
