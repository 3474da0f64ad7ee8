"""asyncpg as SQLAlchemy users write it: the URL, the driver choice, creators, connect errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres]

GRACE = 0.5


@pytest.fixture
def async_driver() -> str:
    """This module's async engines are asyncpg's (the suite's factory adapts their options)."""
    return "asyncpg"


def _asyncpg_url(server: Any, password: str | None = None) -> str:
    url = server.url.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url if password is None else url.replace(f":{server.password}@", f":{password}@", 1)


async def test_the_url_names_the_driver_and_a_sync_engine_uses_psycopg(
    make_async_engine: Any, make_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(_asyncpg_url(postgres_server), query_timeout=1.5)
    assert engine.url.drivername == "postgresql+asyncpg"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "1500ms"
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, asyncpg.Connection)
    sync = make_engine(_asyncpg_url(postgres_server))
    assert sync.url.drivername == "postgresql+psycopg"
    with sync.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


async def test_the_users_server_settings_are_merged(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(
        postgres_server.url,
        async_driver="asyncpg",
        query_timeout=2,
        connect_args={"server_settings": {"lock_timeout": "123ms", "application_name": "mine"}},
    )
    async with engine.connect() as conn:
        shown = await conn.execute(
            text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')")
        )
        assert tuple(shown.one()) == ("2s", "123ms")


async def test_async_creator_gets_the_server_timeouts_and_is_bounded(
    postgres_server: Any,
) -> None:
    made: list[str] = []
    params = {
        "host": postgres_server.host, "port": postgres_server.port,
        "user": postgres_server.user, "password": postgres_server.password,
        "database": postgres_server.database,
    }  # fmt: skip

    async def creator() -> Any:
        made.append("conn")
        return await asyncpg.connect(**params)

    engine = poolguard.create_async_engine(
        _asyncpg_url(postgres_server), async_creator=creator, query_timeout=0.7
    )
    try:
        async with engine.connect() as conn:  # set up by the pool's connect event instead
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "700ms"
        assert made == ["conn"]
    finally:
        await engine.dispose()

    async def hangs() -> Any:
        await asyncio.sleep(30)

    stuck = poolguard.create_async_engine(
        _asyncpg_url(postgres_server), async_creator=hangs, connect_timeout=0.3, retry_attempts=1
    )
    try:
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout) as info:
            async with stuck.connect():
                pass
        assert time.monotonic() - started < 0.3 + GRACE
        assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    finally:
        await stuck.dispose()


async def test_a_wrong_password_fails_at_once_and_says_no_password(
    make_async_engine: Any, postgres_server: Any
) -> None:
    secret = "Wr0ng-s3cret-pw"
    engine = make_async_engine(
        _asyncpg_url(postgres_server, password=secret), retry_attempts=5, retry_timeout=5
    )
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.DBAPIError) as info:
        async with engine.connect():
            pass
    assert time.monotonic() - started < 1.0  # permanent (28P01): not retried for 5 s
    assert secret not in str(info.value)
    snap = poolguard.stats(engine)
    assert snap["retries"] == 0
    assert snap["breaker"]["state"] == "closed"


async def test_a_refused_connect_is_retried_then_reported_as_a_connect_failure(
    make_async_engine: Any, postgres_server: Any
) -> None:
    from poolguard.testing import free_port

    url = _asyncpg_url(postgres_server).replace(f":{postgres_server.port}/", f":{free_port()}/")
    engine = make_async_engine(url, retry_attempts=3, retry_timeout=0.5)
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        async with engine.connect():
            pass
    assert isinstance(info.value, poolguard.PoolguardError)
    assert poolguard.stats(engine)["retries"] >= 1  # connect phase: retried in the window
    assert postgres_server.password not in str(info.value)


async def test_a_server_frozen_right_after_the_handshake_is_a_connect_timeout(
    dedicated_server: Any,
) -> None:
    # A user's creator: the session setup (server timeouts) that follows runs under the
    # connect timeout; SQLAlchemy's codec setup needs no round trip.
    server = dedicated_server("postgres")

    async def connect_then_freeze() -> Any:
        conn = await asyncpg.connect(
            host=server.host, port=server.port, user=server.user,
            password=server.password, database=server.database,
        )  # fmt: skip
        server.freeze()
        return conn

    engine = poolguard.create_async_engine(
        _asyncpg_url(server), async_creator=connect_then_freeze, connect_timeout=0.5,
        retry_attempts=1, query_timeout=5,
    )  # fmt: skip
    try:
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout):
            async with engine.connect():
                pass
        elapsed = time.monotonic() - started
    finally:
        server.thaw()
        await engine.dispose()
    # The dialect's first queries (select version() ...) get twice the connect timeout.
    assert elapsed < 2 * 0.5 + GRACE, elapsed
