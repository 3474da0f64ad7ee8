"""Drop-in fidelity (issue 8 §2): what ``sqlalchemy.create_engine`` accepts, poolguard accepts.

User ``do_connect`` listeners (per-connection credentials), ``creator=`` / ``async_creator=`` /
``module=`` / a patched ``dbapi.connect``; every pool class and ``pool=<instance>``;
``pool_timeout`` and the other pool keywords poolguard takes over; ``URL`` objects; the async
engine's ``url``; ``Connection.info`` left to the user. Real PostgreSQL, sync and async.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AssertionPool, NullPool, QueuePool, SingletonThreadPool, StaticPool

import poolguard
from poolguard.integrations.sqlalchemy import guard_of
from poolguard.testing import DeafListener

pytestmark = pytest.mark.postgres

GRACE = 1.5
#: Keeps fault tests quick without make_engine's fixed acquire/connect timeouts (which some
#: tests here must set through SQLAlchemy's own keywords instead).
QUICK: dict[str, Any] = {
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
    "breaker_failures": None,
    "retry_budget": None,
}


def _no_password(url: str) -> str:
    return sqlalchemy.make_url(url).set(password=None).render_as_string(hide_password=False)


def _conninfo(server: Any, app_name: str) -> str:
    return (
        f"host={server.host} port={server.port} dbname={server.database} user={server.user}"
        f" password={server.password} application_name={app_name}"
    )


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


def _password_listener(engine: Any, password: str, calls: list[str]) -> None:
    """SQLAlchemy's documented per-connection credentials recipe (RDS IAM tokens...)."""

    @event.listens_for(engine, "do_connect")
    def provide_token(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        calls.append("token")
        cparams["password"] = password


# --- do_connect listeners, creators, module= -------------------------------------------------


def test_do_connect_listener_supplies_the_password(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(_no_password(postgres_server.url), query_timeout=2)
    calls: list[str] = []
    _password_listener(engine, postgres_server.password, calls)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == postgres_server.user
        # poolguard's own startup parameters still reach the connection
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
    assert calls == ["token"]


async def test_async_do_connect_listener_supplies_the_password(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(_no_password(postgres_server.url), query_timeout=2)
    calls: list[str] = []
    _password_listener(engine.sync_engine, postgres_server.password, calls)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT current_user"))).scalar() == postgres_server.user
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "2s"
    assert calls == ["token"]


def test_listener_runs_and_the_deadline_still_bounds_the_connect(
    make_engine: Any, postgres_server: Any
) -> None:
    calls: list[str] = []
    with DeafListener() as deaf:
        url = _no_password(deaf.url(postgres_server.url))
        engine = make_engine(url, connect_timeout=0.3, retry_attempts=1)
        _password_listener(engine, postgres_server.password, calls)
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout):
            engine.connect()
        elapsed = time.monotonic() - started
    assert calls == ["token"]
    assert elapsed < 0.3 + GRACE  # libpq alone: 2 s at least


async def test_async_listener_runs_and_the_deadline_still_bounds_the_connect(
    make_async_engine: Any, postgres_server: Any
) -> None:
    calls: list[str] = []
    with DeafListener() as deaf:
        url = _no_password(deaf.url(postgres_server.url))
        engine = make_async_engine(url, connect_timeout=0.3, retry_attempts=1)
        _password_listener(engine.sync_engine, postgres_server.password, calls)
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout):
            async with engine.connect():
                pass
        elapsed = time.monotonic() - started
    assert calls == ["token"]
    assert elapsed < 0.3 + GRACE


def test_listener_returning_its_own_connection_gets_the_server_timeouts(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(postgres_server.url, query_timeout=2, lock_timeout=0.5)
    calls: list[str] = []

    @event.listens_for(engine, "do_connect")
    def connect_myself(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        calls.append("mine")
        return psycopg.connect(_conninfo(postgres_server, app_name))

    with engine.connect() as conn:
        assert calls == ["mine"]
        # no startup options on that connection: poolguard set them after connecting
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "500ms"


def test_creator_is_used_and_guarded(
    engines: list[Any], postgres_server: Any, app_name: str
) -> None:
    made: list[str] = []

    def creator() -> Any:
        made.append("conn")
        return psycopg.connect(_conninfo(postgres_server, app_name))

    engine = poolguard.create_engine(postgres_server.url, creator=creator, query_timeout=2, **QUICK)
    engines.append(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
        conn.commit()  # the next statement is the first of its transaction: retriable
        postgres_server.kill_connections(application_name=app_name)
        assert conn.execute(text("SELECT 7")).scalar() == 7  # retried on a new connection
    assert made == ["conn", "conn"]


async def test_async_creator_is_used_and_bounded(
    async_engines: list[AsyncEngine], postgres_server: Any, app_name: str
) -> None:
    made: list[str] = []

    async def creator() -> Any:
        made.append("conn")
        return await psycopg.AsyncConnection.connect(_conninfo(postgres_server, app_name))

    engine = poolguard.create_async_engine(postgres_server.url, async_creator=creator, **QUICK)
    async_engines.append(engine)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 7"))).scalar() == 7
    assert made == ["conn"]

    async def hangs() -> Any:
        await asyncio.sleep(30)

    stuck = poolguard.create_async_engine(
        postgres_server.url, async_creator=hangs, connect_timeout=0.3, retry_attempts=1
    )
    async_engines.append(stuck)
    started = time.monotonic()
    with pytest.raises(poolguard.ConnectTimeout):
        async with stuck.connect():
            pass
    assert time.monotonic() - started < 0.3 + GRACE


def test_module_override_is_called(make_engine: Any, postgres_server: Any) -> None:
    calls: list[str] = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        calls.append("module")
        return psycopg.connect(*args, **kwargs)

    module = types.ModuleType("psycopg_wrapper")
    module.__dict__.update(psycopg.__dict__)
    module.connect = connect  # type: ignore[attr-defined]
    engine = make_engine(postgres_server.url, module=module)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert calls == ["module"]


def test_patched_dbapi_connect_is_called(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url)
    with (
        mock.patch.object(engine.dialect.loaded_dbapi, "connect", wraps=psycopg.connect) as patched,
        engine.connect() as conn,
    ):
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert patched.call_count == 1


# --- pool classes ---------------------------------------------------------------------------

OTHER_POOLS = [NullPool, StaticPool, SingletonThreadPool, AssertionPool]


@pytest.mark.parametrize("poolclass", OTHER_POOLS, ids=lambda c: c.__name__)
def test_other_pool_classes_serve_and_retry_after_a_kill(
    make_engine: Any, postgres_server: Any, app_name: str, poolclass: Any
) -> None:
    # make_engine passes pool_size/acquire_timeout keywords, which a NullPool refuses
    engine = poolguard.create_engine(
        postgres_server.url,
        poolclass=poolclass,
        connect_args={"application_name": app_name},
        **QUICK,
    )
    try:
        for i in range(3):
            with engine.connect() as conn:
                assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            assert postgres_server.kill_connections(application_name=app_name) >= 1
            assert conn.execute(text("SELECT 2")).scalar() == 2  # retried, not raised
        snap = poolguard.stats(engine)
        assert snap["retries"] >= 1
        assert snap["give_ups"] == 0
        assert snap["checked_out"] == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "poolclass", [NullPool, StaticPool, AssertionPool], ids=lambda c: c.__name__
)
async def test_async_other_pool_classes_serve_and_retry_after_a_kill(
    async_engines: list[AsyncEngine], postgres_server: Any, app_name: str, poolclass: Any
) -> None:
    engine = poolguard.create_async_engine(
        postgres_server.url,
        poolclass=poolclass,
        connect_args={"application_name": app_name},
        **QUICK,
    )
    async_engines.append(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        assert postgres_server.kill_connections(application_name=app_name) >= 1
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    assert poolguard.stats(engine)["give_ups"] == 0


@pytest.mark.parametrize("poolclass", [QueuePool, NullPool], ids=lambda c: c.__name__)
def test_pool_instance_is_guarded(
    engines: list[Any], postgres_server: Any, app_name: str, poolclass: Any
) -> None:
    def creator() -> Any:
        return psycopg.connect(_conninfo(postgres_server, app_name))

    pool = poolclass(creator)
    engine = poolguard.create_engine(postgres_server.url, pool=pool, query_timeout=2, **QUICK)
    engines.append(engine)
    assert engine.pool is pool
    assert isinstance(pool, poolclass)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
        conn.commit()  # the next statement is the first of its transaction: retriable
        postgres_server.kill_connections(application_name=app_name)
        assert conn.execute(text("SELECT 3")).scalar() == 3
        assert poolguard.stats(engine)["checked_out"] == 1
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    assert snap["checked_out"] == 0
    assert snap["idle"] == (1 if poolclass is QueuePool else 0)


def test_queuepool_by_name_is_the_guarded_one(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, poolclass=QueuePool, pool_size=2, pool_use_lifo=True)
    assert type(engine.pool).__name__ == "GuardedQueuePool"
    assert engine.pool.size() == 2  # type: ignore[attr-defined]
    assert engine.pool._pool.use_lifo  # type: ignore[attr-defined]


# --- pool keywords --------------------------------------------------------------------------


def test_pool_timeout_is_the_acquire_timeout(
    engines: list[Any], postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGUARD_ACQUIRE_TIMEOUT", "30")  # the keyword wins
    engine = poolguard.create_engine(
        postgres_server.url, pool_size=1, max_overflow=0, pool_timeout=0.4, **QUICK
    )
    engines.append(engine)
    assert guard_of(engine).settings.acquire_timeout == 0.4
    with engine.connect():
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.4 + GRACE  # not the 30 s of the environment


async def test_async_pool_timeout_is_the_acquire_timeout(
    async_engines: list[AsyncEngine], postgres_server: Any
) -> None:
    engine = poolguard.create_async_engine(
        postgres_server.url, pool_size=1, max_overflow=0, pool_timeout=0.4, **QUICK
    )
    async_engines.append(engine)
    async with engine.connect():
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            async with engine.connect():
                pass
        assert time.monotonic() - started < 0.4 + GRACE


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"pool_timeout": 1, "acquire_timeout": 2}, "pool_timeout"),
        ({"pool_timeout": 0}, "pool_timeout"),
        ({"pool_recycle": 60, "max_lifetime": 120}, "pool_recycle"),
        ({"pool_recycle": 0}, "pool_recycle"),
        ({"pool_pre_ping": True, "validate_idle": 5}, "pool_pre_ping"),
        ({"pool_reset_on_return": "sometimes"}, "pool_reset_on_return"),
        ({"poolclass": NullPool, "pool_size": 3}, "pool_size"),
        ({"poolclass": NullPool, "max_overflow": 3}, "max_overflow"),
        ({"poolclass": StaticPool, "pool_timeout": 3}, "pool_timeout"),
        ({"poolclass": NullPool, "acquire_timeout": 3}, "acquire_timeout"),
        ({"connect_args": {"connect_timeout": 9}, "connect_timeout": 3}, "connect_timeout"),
        ({"backend": "redis"}, "backend"),
    ],
)
def test_refused_keywords_are_named(
    postgres_server: Any, keywords: dict[str, Any], named: str
) -> None:
    with pytest.raises(poolguard.ConfigError) as info:
        poolguard.create_engine(postgres_server.url, **keywords)
    assert named in str(info.value)
    assert postgres_server.password not in str(info.value)


def test_pool_instance_refuses_pool_keywords(postgres_server: Any) -> None:
    for keyword, value in [("pool_size", 3), ("poolclass", QueuePool), ("pool_timeout", 1)]:
        pool = NullPool(lambda: None)
        with pytest.raises(poolguard.ConfigError, match=keyword):
            poolguard.create_engine(postgres_server.url, pool=pool, **{keyword: value})


def test_agreeing_keywords_and_mappings(engines: list[Any], postgres_server: Any) -> None:
    engine = poolguard.create_engine(
        postgres_server.url,
        pool_timeout=3,
        acquire_timeout="3s",
        pool_recycle=120,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 7},
    )
    engines.append(engine)
    settings = guard_of(engine).settings
    assert settings.acquire_timeout == 3
    assert settings.max_lifetime == 120
    assert settings.validate_idle == 0
    assert settings.connect_timeout == 7
    engine2 = poolguard.create_engine(postgres_server.url, pool_recycle=-1, pool_pre_ping=False)
    engines.append(engine2)
    assert guard_of(engine2).settings.max_lifetime is None
    assert guard_of(engine2).settings.validate_idle is None


def test_pool_pre_ping_pings_every_checkout(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_pre_ping=True)
    for _ in range(3):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    assert poolguard.stats(engine)["validations"] == 2  # the fresh one is not pinged


@pytest.mark.parametrize(("mode", "kept"), [("commit", 1), ("rollback", 0), (None, 0)])
def test_pool_reset_on_return(
    make_engine: Any, postgres_server: Any, app_name: str, mode: Any, kept: int
) -> None:
    table = f"reset_{app_name}"
    engine = make_engine(postgres_server.url, pool_size=1, pool_reset_on_return=mode)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (x int)"))
    try:
        raw = engine.raw_connection()
        raw.cursor().execute(f"INSERT INTO {table} VALUES (1)")
        raw.close()  # returned inside its transaction
        raw = engine.raw_connection()
        status = raw.driver_connection.info.transaction_status  # type: ignore[union-attr]
        # None: returned as it was, like plain SQLAlchemy (the same connection comes back)
        assert (status == psycopg.pq.TransactionStatus.INTRANS) == (mode is None)
        raw.rollback()
        raw.close()
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == kept
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


def test_connect_args_options_are_merged(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(
        postgres_server.url,
        query_timeout=2,
        connect_args={"options": "-c search_path=pg_catalog"},
    )
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"
        assert conn.execute(text("SHOW search_path")).scalar() == "pg_catalog"


def test_isolation_level_and_execution_options(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(
        postgres_server.url,
        isolation_level="SERIALIZABLE",
        execution_options={"logging_token": "t"},
    )
    with engine.connect() as conn:
        assert conn.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
        assert conn.get_execution_options()["logging_token"] == "t"


# --- URLs, engine.url, Connection.info --------------------------------------------------------


def test_url_objects_are_accepted(make_engine: Any, postgres_server: Any) -> None:
    url = sqlalchemy.make_url(postgres_server.url)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert postgres_server.password not in repr(guard_of(engine).settings)
    assert postgres_server.password not in guard_of(engine).redacted_url
    built = sqlalchemy.URL.create(
        "postgresql+psycopg",
        username=postgres_server.user,
        password=postgres_server.password,
        host=postgres_server.host,
        port=postgres_server.port,
        database=postgres_server.database,
    )
    with make_engine(built).connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


async def test_async_engine_keeps_the_driver_name(
    make_async_engine: Any, postgres_server: Any
) -> None:
    written = postgres_server.url.replace("postgresql://", "postgresql+psycopg_async://", 1)
    engine = make_async_engine(sqlalchemy.make_url(written))
    assert engine.url.drivername == "postgresql+psycopg_async"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    plain = make_async_engine(postgres_server.url.replace("postgresql://", "postgresql+psycopg://"))
    assert plain.url.drivername == "postgresql+psycopg"


def test_connection_info_is_the_users(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, validate_idle=0)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert dict(conn.info) == {}
        conn.info["tenant"] = "a"
    with engine.connect() as conn:  # the same DBAPI connection: the user's info kept
        conn.execute(text("SELECT 1"))
        assert dict(conn.info) == {"tenant": "a"}
    assert poolguard.stats(engine)["validations"] == 1  # bookkeeping still works elsewhere
