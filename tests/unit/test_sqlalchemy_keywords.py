"""SQLAlchemy create_engine keywords poolguard takes over: honoured or refused, never ignored
(pure logic of ``poolguard.integrations.sqlalchemy._keywords``; engines: the drop-in
integration tests). Also SQLAlchemy ``URL`` objects as settings."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.pool.base import ResetStyle

from poolguard.config.settings import Settings
from poolguard.config.urls import normalize_sql_url
from poolguard.errors import ConfigError
from poolguard.integrations.sqlalchemy._keywords import reset_mode, translate


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"pool_timeout": 3}, {"acquire_timeout": 3.0}),
        ({"pool_timeout": None}, {"acquire_timeout": None}),
        ({"pool_timeout": 3, "acquire_timeout": "3s"}, {"acquire_timeout": "3s"}),
        ({"pool_recycle": 60}, {"max_lifetime": 60.0}),
        ({"pool_recycle": -1}, {"max_lifetime": None}),
        ({"pool_pre_ping": True}, {"validate_idle": 0.0}),
        ({"pool_pre_ping": False}, {"validate_idle": None}),
        ({"echo": True}, {"echo": True}),
    ],
)
def test_translate(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert translate(dict(given)) == expected


def test_connect_args_connect_timeout_becomes_the_deadline() -> None:
    out = translate({"connect_args": {"connect_timeout": 9}})
    assert out["connect_timeout"] == 9
    assert out["connect_args"] == {"connect_timeout": 9}  # the driver still gets it


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"pool_timeout": 0}, "pool_timeout"),
        ({"pool_timeout": -1}, "pool_timeout"),
        ({"pool_timeout": "3"}, "pool_timeout"),
        ({"pool_timeout": 1, "acquire_timeout": 2}, "pool_timeout"),
        ({"pool_recycle": 0}, "pool_recycle"),
        ({"pool_recycle": 10, "max_lifetime": 20}, "pool_recycle"),
        ({"pool_pre_ping": 1}, "pool_pre_ping"),
        ({"pool_pre_ping": True, "validate_idle": 1}, "pool_pre_ping"),
        ({"connect_args": {"connect_timeout": 9}, "connect_timeout": 2}, "connect_timeout"),
    ],
)
def test_refused(given: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        translate(dict(given))
    assert named in str(info.value)
    assert info.value.variable is not None


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("rollback", "rollback"),
        (True, "rollback"),
        (ResetStyle.reset_rollback, "rollback"),
        ("commit", "commit"),
        (ResetStyle.reset_commit, "commit"),
        (None, "none"),
        (False, "none"),
        (ResetStyle.reset_none, "none"),
    ],
)
def test_reset_mode(value: Any, mode: str) -> None:
    assert reset_mode(value) == mode


def test_reset_mode_refuses_unknown() -> None:
    with pytest.raises(ConfigError, match="pool_reset_on_return"):
        reset_mode("sometimes")


def test_url_objects_are_settings_urls() -> None:
    url = sqlalchemy.URL.create(
        "postgresql+psycopg_async", username="u", password="p@ss/w:rd", host="h", database="db"
    )
    settings = Settings(url=url)  # type: ignore[arg-type]
    assert settings.sql_url().startswith("postgresql+psycopg://u:")
    assert settings.sql_url(async_=True).startswith("postgresql+psycopg_async://")
    assert sqlalchemy.make_url(settings.sql_url()).password == "p@ss/w:rd"
    assert "p@ss" not in repr(settings)
    loaded = Settings.from_env({}, url=url)
    assert loaded.url == settings.url


def test_async_driver_kept_only_where_written() -> None:
    assert normalize_sql_url("postgresql://h/db", async_=True) == "postgresql+psycopg://h/db"
    assert (
        normalize_sql_url("postgresql+psycopg_async://h/db", async_=False)
        == "postgresql+psycopg://h/db"
    )


@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize(
    ("poolclass", "is_async"),
    [
        (sqlalchemy.pool.QueuePool, True),
        (sqlalchemy.pool.SingletonThreadPool, True),
        (sqlalchemy.pool.AsyncAdaptedQueuePool, False),
    ],
)
def test_wrong_kind_of_pool_names_the_users_class(
    poolclass: type[sqlalchemy.pool.Pool], is_async: bool, instance: bool
) -> None:
    # SQLAlchemy's own error, naming the class the user passed (not poolguard's guarded twin):
    # SQLAlchemy's test_pool_classes matches on that name.
    import poolguard

    kw: dict[str, Any] = {"pool": poolclass(lambda: None)} if instance else {"poolclass": poolclass}
    create = poolguard.create_async_engine if is_async else poolguard.create_engine
    with pytest.raises(sqlalchemy.exc.ArgumentError, match=rf"Pool class {poolclass.__name__} "):
        create("postgresql://u:p@127.0.0.1:1/db", **kw)
