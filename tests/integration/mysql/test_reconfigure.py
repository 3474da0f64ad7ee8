"""Live reconfiguration (poolguard.reconfigure) of a MariaDB engine: session variables and
PyMySQL's socket timeouts follow the new query_timeout."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = pytest.mark.mysql


def _session(conn: Any) -> tuple[float, float]:
    """(@@max_statement_time, PyMySQL's read timeout) of this connection."""
    driver = conn.connection.driver_connection
    return float(conn.execute(text("SELECT @@max_statement_time")).scalar()), driver._read_timeout


def test_query_timeout_change_reaches_the_session_and_the_socket(
    make_engine: Any, mysql_server: Any
) -> None:
    engine = make_engine(mysql_server.url, pool_size=1, max_overflow=0, query_timeout=5)
    with engine.connect() as conn:
        statement_time, read_timeout = _session(conn)
    assert statement_time == 5.0
    poolguard.reconfigure(engine, query_timeout=20)
    with engine.connect() as conn:
        # Opened again with the new values: a 5 s socket timeout would cut a 20 s statement.
        assert _session(conn) == (20.0, read_timeout + 15)
    poolguard.reconfigure(engine, query_timeout="300ms")
    with engine.connect() as conn:
        assert _session(conn)[0] == 0.3
        with pytest.raises(poolguard.QueryTimeout):
            conn.execute(text("SELECT SLEEP(2)"))
    assert poolguard.stats(engine)["reconfigured_evictions"] == 2
