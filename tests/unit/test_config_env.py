"""Settings.from_env: precedence, Redis overrides, named databases, unknown variables."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolguard.config import REDIS_DEFAULTS, Settings, load_settings
from poolguard.config.env import RESERVED_NAMES, lookup_order, unknown_variables, url_variable
from poolguard.config.fields import ENV_FIELDS
from poolguard.errors import ConfigError

SECRET = "Zq9-s3cr3t"


def test_empty_environment_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLGUARD_POOL_SIZE", "9")
    assert Settings.from_env().pool_size == 9


def test_every_field_has_a_variable() -> None:
    env = {
        "POOLGUARD_POOL_SIZE": "2", "POOLGUARD_MAX_OVERFLOW": "0",
        "POOLGUARD_ACQUIRE_TIMEOUT": "1s", "POOLGUARD_CONNECT_TIMEOUT": "500ms",
        "POOLGUARD_QUERY_TIMEOUT": "2s", "POOLGUARD_TRANSACTION_TIMEOUT": "1m",
        "POOLGUARD_IDLE_IN_TRANSACTION_TIMEOUT": "30s", "POOLGUARD_LOCK_TIMEOUT": "1s",
        "POOLGUARD_MAX_LIFETIME": "1h", "POOLGUARD_MAX_IDLE": "5m",
        "POOLGUARD_VALIDATE_IDLE": "0", "POOLGUARD_RETRY_ATTEMPTS": "5",
        "POOLGUARD_RETRY_BACKOFF_INITIAL": "10ms", "POOLGUARD_RETRY_BACKOFF_MAX": "1s",
        "POOLGUARD_RETRY_BACKOFF_MULTIPLIER": "3", "POOLGUARD_RETRY_JITTER": "Decorrelated",
        "POOLGUARD_RETRY_TIMEOUT": "off", "POOLGUARD_RETRY_BUDGET": "0.5",
        "POOLGUARD_BREAKER_FAILURES": "off", "POOLGUARD_BREAKER_RESET": "30s",
        "POOLGUARD_TCP_KEEPALIVE": "0", "POOLGUARD_PGBOUNCER": "on",
        "POOLGUARD_KEEPALIVE": "45s", "POOLGUARD_ASYNC_DRIVER": "asyncpg",
    }  # fmt: skip
    assert {v.removeprefix("POOLGUARD_").lower() for v in env} == set(ENV_FIELDS)
    s = Settings.from_env(env)
    assert (s.pool_size, s.max_overflow, s.acquire_timeout, s.connect_timeout) == (2, 0, 1, 0.5)
    assert (s.query_timeout, s.transaction_timeout, s.idle_in_transaction_timeout) == (2, 60, 30)
    assert (s.lock_timeout, s.max_lifetime, s.max_idle, s.validate_idle) == (1, 3600, 300, 0.0)
    assert (s.retry_attempts, s.retry_backoff_initial, s.retry_backoff_max) == (5, 0.01, 1)
    assert (s.retry_backoff_multiplier, s.retry_jitter, s.retry_timeout) == (
        3,
        "decorrelated",
        None,
    )
    assert (s.retry_budget, s.breaker_failures, s.breaker_reset) == (0.5, None, 30)
    assert (s.tcp_keepalive, s.pgbouncer, s.keepalive) == (None, "on", 45.0)
    assert s.async_driver == "asyncpg"


def test_keyword_overrides_win() -> None:
    env = {"POOLGUARD_POOL_SIZE": "9", "DATABASE_URL": "postgres://h/env"}
    s = Settings.from_env(env, pool_size=3, url="mysql://h/kw", query_timeout="1s")
    assert (s.pool_size, s.url, s.query_timeout) == (3, "mysql+pymysql://h/kw", 1.0)


def test_override_bad_value_names_the_keyword() -> None:
    with pytest.raises(ConfigError, match="query_timeout='x'") as info:
        Settings.from_env({}, query_timeout="x")
    assert info.value.variable == "query_timeout"


def test_unknown_keyword_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean query_timeout"):
        Settings.from_env({}, query_timout=5)


def test_bad_value_fails_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POOLGUARD_ACQUIRE_TIMEOUT": "ten"})
    assert info.value.variable == "POOLGUARD_ACQUIRE_TIMEOUT"
    assert "POOLGUARD_ACQUIRE_TIMEOUT='ten'" in str(info.value)


def test_contradiction_names_both_variables() -> None:
    env = {"POOLGUARD_QUERY_TIMEOUT": "10s", "POOLGUARD_TRANSACTION_TIMEOUT": "5s"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert "POOLGUARD_QUERY_TIMEOUT=10s" in str(info.value)
    assert "POOLGUARD_TRANSACTION_TIMEOUT=5s" in str(info.value)


def test_contradiction_with_a_default_names_the_field() -> None:
    with pytest.raises(
        ConfigError, match=r"POOLGUARD_RETRY_BACKOFF_INITIAL=5s .* retry_backoff_max"
    ):
        Settings.from_env({"POOLGUARD_RETRY_BACKOFF_INITIAL": "5s"})


def test_database_url_normalized_and_redacted() -> None:
    s = Settings.from_env({"DATABASE_URL": f"postgres://u:{SECRET}@h/db"})
    assert s.url == f"postgresql+psycopg://u:{SECRET}@h/db"
    assert SECRET not in repr(s)


def test_blank_url_is_no_url() -> None:
    assert Settings.from_env({"DATABASE_URL": "  "}).url is None


def test_bad_database_url_is_redacted_in_error() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": f"postgresql+pg8000://u:{SECRET}@h/db"})
    assert SECRET not in str(info.value)
    assert info.value.variable == "DATABASE_URL"


def test_redis_defaults_and_overrides() -> None:
    env = {
        "REDIS_URL": "redis://cache:6379/0",
        "DATABASE_URL": "postgres://h/db",
        "POOLGUARD_QUERY_TIMEOUT": "30s",
        "POOLGUARD_CONNECT_TIMEOUT": "3s",
        "POOLGUARD_REDIS_CONNECT_TIMEOUT": "200ms",
    }
    r = Settings.from_env(env, backend="redis")
    assert r.backend == "redis"
    assert r.url == "redis://cache:6379/0"
    assert r.connect_timeout == 0.2  # POOLGUARD_REDIS_ wins
    assert r.query_timeout == 30.0  # POOLGUARD_ applies when no Redis override
    assert r.pool_size == REDIS_DEFAULTS["pool_size"]  # Redis default, not the SQL one
    sql = Settings.from_env(env)
    assert sql.connect_timeout == 3.0  # POOLGUARD_REDIS_ never affects SQL
    assert sql.pool_size == 5


def test_redis_bad_override_names_redis_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"POOLGUARD_REDIS_QUERY_TIMEOUT": "fast"}, backend="redis")
    assert info.value.variable == "POOLGUARD_REDIS_QUERY_TIMEOUT"


def test_named_database() -> None:
    env = {
        "DATABASE_URL": "postgres://main/db",
        "ANALYTICS_DATABASE_URL": "mysql://olap/db",
        "POOLGUARD_POOL_SIZE": "4",
        "POOLGUARD_QUERY_TIMEOUT": "2s",
        "POOLGUARD_ANALYTICS_QUERY_TIMEOUT": "5m",
    }
    a = Settings.from_env(env, name="analytics")
    assert (a.name, a.url, a.query_timeout, a.pool_size) == (
        "analytics",
        "mysql+pymysql://olap/db",
        300.0,
        4,
    )
    main = Settings.from_env(env)
    assert (main.url, main.query_timeout) == ("postgresql+psycopg://main/db", 2.0)


def test_named_redis() -> None:
    env = {
        "CACHE_REDIS_URL": "redis://c/1",
        "POOLGUARD_REDIS_QUERY_TIMEOUT": "1s",
        "POOLGUARD_CACHE_QUERY_TIMEOUT": "50ms",
    }
    c = Settings.from_env(env, backend="redis", name="cache")
    assert (c.url, c.query_timeout, c.backend) == ("redis://c/1", 0.05, "redis")


def test_named_database_without_url() -> None:
    assert Settings.from_env({"DATABASE_URL": "postgres://h/d"}, name="reports").url is None


@pytest.mark.parametrize(
    "name", ["retry", "pool", "max", "redis", "idle_in", "retry_backoff", "test"]
)
def test_reserved_names(name: str) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        Settings.from_env({}, name=name)


@pytest.mark.parametrize("name", ["", "9lives", "a-b", "a__b", "trailing_", "ünï"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        Settings.from_env({}, name=name)


def test_url_variables_and_order() -> None:
    assert url_variable("sql", None) == "DATABASE_URL"
    assert url_variable("redis", "cache") == "CACHE_REDIS_URL"
    assert url_variable("sql", "read_replica") == "READ_REPLICA_DATABASE_URL"
    assert lookup_order("query_timeout", "redis", "cache") == [
        "POOLGUARD_CACHE_QUERY_TIMEOUT",
        "POOLGUARD_REDIS_QUERY_TIMEOUT",
        "POOLGUARD_QUERY_TIMEOUT",
    ]


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("POOLGUARD_QUERY_TIMEOUTS", "POOLGUARD_QUERY_TIMEOUT"),
        ("POOLGUARD_QUERY_TIMOUT", "POOLGUARD_QUERY_TIMEOUT"),
        ("POOLGUARD_POOLSIZE", "POOLGUARD_POOL_SIZE"),
        ("POOLGUARD_REDIS_QUERY_TIMEOUTT", "POOLGUARD_REDIS_QUERY_TIMEOUT"),
        ("POOLGUARD_RETRY_ATTEMPT", "POOLGUARD_RETRY_ATTEMPTS"),
    ],
)
def test_unknown_variable_fails_with_suggestion(variable: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: "1"})
    assert f"{variable} (did you mean {suggestion}?)" in str(info.value)
    assert "POOLGUARD_ALLOW_UNKNOWN=1" in str(info.value)
    assert info.value.variable == variable


def test_unknown_variable_without_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown poolguard variable: POOLGUARD_ZZZ;"):
        Settings.from_env({"POOLGUARD_ZZZ": "1"})


def test_allow_unknown_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    env = {"POOLGUARD_QUERY_TIMEOUTS": "5s", "POOLGUARD_ALLOW_UNKNOWN": "1"}
    with caplog.at_level(logging.WARNING, logger="poolguard.config"):
        s = Settings.from_env(env)
    assert s.query_timeout is None
    assert "POOLGUARD_QUERY_TIMEOUTS" in caplog.text


def test_allow_unknown_bad_value() -> None:
    with pytest.raises(ConfigError, match="POOLGUARD_ALLOW_UNKNOWN='perhaps'"):
        Settings.from_env({"POOLGUARD_X": "1", "POOLGUARD_ALLOW_UNKNOWN": "perhaps"})


def test_known_shapes_are_not_unknown() -> None:
    env = {
        "POOLGUARD_POOL_SIZE": "1",
        "POOLGUARD_REDIS_POOL_SIZE": "1",
        "POOLGUARD_ANALYTICS_POOL_SIZE": "1",
        "POOLGUARD_READ_REPLICA_QUERY_TIMEOUT": "1",
        "POOLGUARD_ALLOW_UNKNOWN": "0",
        "POOLGUARD_TEST_SERVERS": "local",  # poolguard.testing's own namespace
        "POOLGUARD_TEST_POSTGRES_URL": "postgresql://h/db",
        "OTHER_VARIABLE": "x",
    }
    assert unknown_variables(env) == []
    # A "name" that is reserved cannot make a typo look valid.
    assert unknown_variables({"POOLGUARD_RETRY_POOL_SIZE": "1"}) == ["POOLGUARD_RETRY_POOL_SIZE"]


def test_reserved_names_cover_field_prefixes() -> None:
    assert {
        "RETRY",
        "RETRY_BACKOFF",
        "POOL",
        "MAX",
        "IDLE_IN_TRANSACTION",
        "REDIS",
    } <= RESERVED_NAMES


def test_load_settings_alias() -> None:
    assert load_settings({"POOLGUARD_POOL_SIZE": "2"}).pool_size == 2


@given(
    st.dictionaries(
        st.sampled_from(sorted(f"POOLGUARD_{f.upper()}" for f in ENV_FIELDS)),
        st.text(max_size=20),
        max_size=5,
    )
)
def test_from_env_raises_only_config_error(env: dict[str, str]) -> None:
    error: ConfigError | None = None
    try:
        Settings.from_env(env)
    except ConfigError as exc:
        error = exc
    assert error is None or error.variable is not None


def test_docs_list_every_variable() -> None:
    from pathlib import Path

    from poolguard.config.env import EXTRA_VARIABLES

    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    text = docs.read_text()
    for variable in [f"POOLGUARD_{f.upper()}" for f in ENV_FIELDS] + sorted(EXTRA_VARIABLES):
        assert f"`{variable}`" in text, f"{variable} is missing from docs/configuration.md"


def test_async_driver_picks_the_driver_of_a_url_that_names_none() -> None:
    env = {"DATABASE_URL": "postgres://u:p@h/db", "POOLGUARD_ASYNC_DRIVER": "asyncpg"}
    s = Settings.from_env(env)
    assert s.sql_url() == "postgresql+psycopg://u:p@h/db"  # sync engines: psycopg
    assert s.sql_url(async_=True) == "postgresql+asyncpg://u:p@h/db"
    assert Settings.from_env({"DATABASE_URL": "postgres://h/db"}).sql_url(async_=True) == (
        "postgresql+psycopg://h/db"  # the default stays psycopg
    )
    # A URL that names its async driver wins over the variable.
    named = {**env, "DATABASE_URL": "postgresql+psycopg_async://h/db"}
    assert Settings.from_env(named).sql_url(async_=True) == "postgresql+psycopg_async://h/db"
    keyword = Settings.from_env(env, async_driver="psycopg")
    assert keyword.sql_url(async_=True) == "postgresql+psycopg://u:p@h/db"


def test_bad_async_driver_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DATABASE_URL": "postgres://h/db", "POOLGUARD_ASYNC_DRIVER": "pg8000"})
    assert info.value.variable == "POOLGUARD_ASYNC_DRIVER"
    assert "psycopg" in str(info.value)
    assert "asyncpg" in str(info.value)
