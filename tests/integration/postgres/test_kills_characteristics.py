"""A read on a Connection with characteristics of its own (``isolation_level="AUTOCOMMIT"``,
read-only) that meets a killed backend is retried on a fresh DBAPI connection that gets those
characteristics again, and the pool undoes them on return.

Before: such a Connection never moved to a fresh DBAPI connection, so the read surfaced; that
also made ``run_transaction(resolve_ambiguous=True)``'s own ``pg_xact_status`` lookup (on an
AUTOCOMMIT connection) give up during a restart (found by the FastAPI chaos run, 3 in 22).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

import poolguard

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def _autocommit(conn: Any) -> bool:
    return bool(conn.connection.driver_connection.autocommit)


def test_autocommit_read_retried_on_a_fresh_autocommit_connection(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, validate_idle=None)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        before = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        postgres_server.kill_connections(application_name=app_name)
        after = conn.execute(text("SELECT pg_backend_pid()")).scalar()  # retried
        assert after != before
        assert _autocommit(conn)  # the fresh connection got the characteristic again
    with engine.connect().execution_options(postgresql_readonly=True) as conn:
        postgres_server.kill_connections(application_name=app_name)
        # The first statement meets the killed backend; the fresh connection is read-only too.
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
    with engine.connect() as conn:  # back in the pool: characteristics undone
        assert not _autocommit(conn)
        assert conn.execute(text("SHOW transaction_read_only")).scalar() == "off"
    assert poolguard.stats(engine)["give_ups"] == 0


@both_async_drivers
async def test_async_autocommit_read_retried(
    make_async_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_async_engine(postgres_server.url, pool_size=1, validate_idle=None)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        before = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        postgres_server.kill_connections(application_name=app_name)
        after = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        assert after != before
        raw = await conn.get_raw_connection()
        assert raw.dbapi_connection.autocommit  # SQLAlchemy's adapter, either driver
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert not raw.dbapi_connection.autocommit
    assert poolguard.stats(engine)["give_ups"] == 0
