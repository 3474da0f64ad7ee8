"""Drop-in fidelity (issue 8 §2) on MariaDB: per-connection credentials through a
``do_connect`` listener, every pool class, ``pool_timeout``, ``URL`` objects, the async engine's
``url`` and ``Connection.info``, sync (PyMySQL) and async (aiomysql)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AssertionPool, NullPool, SingletonThreadPool, StaticPool

import poolguard
from poolguard.integrations.sqlalchemy import guard_of
from poolguard.testing import DeafListener

from .conftest import connection_id, kill

pytestmark = pytest.mark.mysql

GRACE = 1.5
QUICK: dict[str, Any] = {
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
    "breaker_failures": None,
    "retry_budget": None,
}


def _no_password(url: str) -> str:
    return sqlalchemy.make_url(url).set(password=None).render_as_string(hide_password=False)


def _password_listener(engine: Any, password: str, calls: list[str]) -> None:
    @event.listens_for(engine, "do_connect")
    def provide_token(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        calls.append("token")
        cparams["password"] = password


@pytest.fixture
def engines() -> Iterator[list[sqlalchemy.Engine]]:
    made: list[sqlalchemy.Engine] = []
    yield made
    for engine in made:
        engine.dispose()


@pytest.fixture
async def async_engines() -> AsyncIterator[list[AsyncEngine]]:
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        await engine.dispose()


def test_do_connect_listener_supplies_the_password(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(_no_password(mysql_server.url), query_timeout=2)
    calls: list[str] = []
    _password_listener(engine, mysql_server.password, calls)
    with engine.connect() as conn:
        user = conn.execute(text("SELECT CURRENT_USER()")).scalar()
        assert str(user).startswith(f"{mysql_server.user}@")
        # poolguard's session setup still ran
        assert float(conn.execute(text("SELECT @@max_statement_time")).scalar()) == 2.0
    assert calls == ["token"]


async def test_async_do_connect_listener_supplies_the_password(
    make_async_engine: Any, mysql_server: Any
) -> None:
    engine = make_async_engine(_no_password(mysql_server.url))
    calls: list[str] = []
    _password_listener(engine.sync_engine, mysql_server.password, calls)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    assert calls == ["token"]


def test_listener_runs_and_the_deadline_still_bounds_the_connect(
    make_engine: Any, mysql_server: Any
) -> None:
    calls: list[str] = []
    with DeafListener() as deaf:
        engine = make_engine(
            _no_password(deaf.url(mysql_server.url)), connect_timeout=0.3, retry_attempts=1
        )
        _password_listener(engine, mysql_server.password, calls)
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            engine.connect()
        elapsed = time.monotonic() - started
    assert calls == ["token"]
    assert elapsed < 0.3 + GRACE


async def test_async_listener_runs_and_the_deadline_still_bounds_the_connect(
    make_async_engine: Any, mysql_server: Any
) -> None:
    calls: list[str] = []
    with DeafListener() as deaf:
        engine = make_async_engine(
            _no_password(deaf.url(mysql_server.url)), connect_timeout=0.3, retry_attempts=1
        )
        _password_listener(engine.sync_engine, mysql_server.password, calls)
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError):
            async with engine.connect():
                pass
        elapsed = time.monotonic() - started
    assert calls == ["token"]
    assert elapsed < 0.3 + GRACE


@pytest.mark.parametrize(
    "poolclass",
    [NullPool, StaticPool, SingletonThreadPool, AssertionPool],
    ids=lambda c: c.__name__,
)
def test_other_pool_classes_serve_and_retry_after_a_kill(
    engines: list[Any], mysql_server: Any, poolclass: Any
) -> None:
    engine = poolguard.create_engine(mysql_server.url, poolclass=poolclass, **QUICK)
    engines.append(engine)
    with engine.connect() as conn:
        victim = connection_id(conn)
        conn.commit()
        kill(mysql_server, victim)
        assert conn.execute(text("SELECT 2")).scalar() == 2  # retried, not raised
        assert connection_id(conn) != victim
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    assert snap["give_ups"] == 0


@pytest.mark.parametrize("poolclass", [NullPool, StaticPool], ids=lambda c: c.__name__)
async def test_async_other_pool_classes_serve_and_retry_after_a_kill(
    async_engines: list[AsyncEngine], mysql_server: Any, poolclass: Any
) -> None:
    engine = poolguard.create_async_engine(mysql_server.url, poolclass=poolclass, **QUICK)
    async_engines.append(engine)
    async with engine.connect() as conn:
        victim = (await conn.execute(text("SELECT CONNECTION_ID()"))).scalar()
        await conn.commit()
        kill(mysql_server, int(victim))
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    assert poolguard.stats(engine)["give_ups"] == 0


def test_pool_timeout_is_the_acquire_timeout(engines: list[Any], mysql_server: Any) -> None:
    engine = poolguard.create_engine(
        mysql_server.url, pool_size=1, max_overflow=0, pool_timeout=0.4, **QUICK
    )
    engines.append(engine)
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.4 + GRACE  # not the 10 s default acquire timeout


def test_url_objects_and_connection_info(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(sqlalchemy.make_url(mysql_server.url), pool_size=1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert dict(conn.info) == {}
    assert mysql_server.password not in repr(guard_of(engine).settings)


async def test_async_engine_keeps_the_url(make_async_engine: Any, mysql_server: Any) -> None:
    written = mysql_server.url.replace("mysql://", "mysql+aiomysql://", 1)
    engine = make_async_engine(sqlalchemy.make_url(written))
    assert engine.url.drivername == "mysql+aiomysql"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        assert dict(conn.info) == {}
