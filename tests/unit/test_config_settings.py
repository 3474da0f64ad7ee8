"""Settings construction, validation, repr and helpers (no environment involved)."""

from __future__ import annotations

import dataclasses

import pytest

from poolguard.config import Settings
from poolguard.errors import ConfigError

SECRET = "Zq9-s3cr3t"


def test_defaults_are_valid() -> None:
    s = Settings()
    assert s.pool_size == 5
    assert s.query_timeout is None
    assert s.backend == "sql"


@pytest.mark.parametrize(
    ("changes", "variable", "needle"),
    [
        ({"pool_size": 0}, "pool_size", ">= 1"),
        ({"pool_size": True}, "pool_size", "whole number"),
        ({"pool_size": 2.5}, "pool_size", "whole number"),
        ({"max_overflow": -1}, "max_overflow", ">= 0"),
        ({"query_timeout": -1.0}, "query_timeout", "duration"),
        ({"query_timeout": float("nan")}, "query_timeout", "duration"),
        ({"query_timeout": float("inf")}, "query_timeout", "duration"),
        ({"connect_timeout": "soon"}, "connect_timeout", "250ms"),
        ({"retry_attempts": 0}, "retry_attempts", ">= 1"),
        ({"retry_budget": -0.1}, "retry_budget", ">= 0"),
        ({"retry_backoff_multiplier": 0.5}, "retry_backoff_multiplier", ">= 1"),
        ({"retry_backoff_initial": None}, "retry_backoff_initial", "duration"),
        ({"breaker_failures": -1}, "breaker_failures", ">= 1"),
        ({"breaker_reset": -1}, "breaker_reset", "duration"),
        ({"retry_jitter": "gaussian"}, "retry_jitter", "full/equal/decorrelated/none"),
        ({"retry_jitter": 1}, "retry_jitter", "full/equal"),
        ({"pgbouncer": "maybe"}, "pgbouncer", "auto/on/off"),
        ({"backend": "mongo"}, "backend", "sql or redis"),
        ({"name": "bad name"}, "name", "letters"),
        ({"name": "retry"}, "name", "reserved"),
        ({"url": "sqlite:///x"}, "DATABASE_URL", "unsupported scheme"),
        ({"url": ""}, "url", "URL string"),
    ],
)
def test_invalid_fields(changes: dict[str, object], variable: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert info.value.variable == variable


def test_replace_validates_too() -> None:
    with pytest.raises(ConfigError):
        Settings().replace(pool_size=0)
    assert Settings().replace(pool_size=7).pool_size == 7


def test_contradictions() -> None:
    with pytest.raises(
        ConfigError, match="query_timeout=10s is longer than transaction_timeout=5s"
    ):
        Settings(query_timeout=10, transaction_timeout=5)
    with pytest.raises(ConfigError, match="retry_backoff_initial=3s is longer than"):
        Settings(retry_backoff_initial=3, retry_backoff_max=2)
    Settings(query_timeout=5, transaction_timeout=5)  # equal is fine


def test_coercion_of_text_and_ints() -> None:
    s = Settings(query_timeout="250ms", pool_size="3", breaker_failures="off")  # type: ignore[arg-type]
    assert s.query_timeout == 0.25
    assert s.pool_size == 3
    assert s.breaker_failures is None
    s = Settings(connect_timeout=2, max_lifetime=0, breaker_failures=0, tcp_keepalive=0)
    assert isinstance(s.connect_timeout, float)
    assert s.max_lifetime is None  # 0 disables, as in the environment
    assert s.breaker_failures is None
    assert s.tcp_keepalive is None


def test_validate_idle_zero_means_always() -> None:
    assert Settings(validate_idle=0).validate_idle == 0.0
    assert Settings(validate_idle=None).validate_idle is None


def test_retry_budget_zero_kept() -> None:
    assert Settings(retry_budget=0).retry_budget == 0.0


def test_url_is_normalized_and_redacted() -> None:
    s = Settings(url=f"postgres://app:{SECRET}@db/app?sslmode=require")
    assert s.url == f"postgresql+psycopg://app:{SECRET}@db/app?sslmode=require"
    assert s.sql_url(async_=True) == s.url
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in str(s.describe())
    assert s.redacted_url() == "postgresql+psycopg://app:***@db/app?sslmode=require"


def test_mysql_url_sync_and_async() -> None:
    s = Settings(url="mysql://app:pw@db/app")
    assert s.sql_url() == "mysql+pymysql://app:pw@db/app"
    assert s.sql_url(async_=True) == "mysql+aiomysql://app:pw@db/app"


def test_redis_url() -> None:
    s = Settings(url=f"redis://:{SECRET}@cache:6379/0", backend="redis")
    assert s.redis_url() == f"redis://:{SECRET}@cache:6379/0"
    assert SECRET not in repr(s)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings(backend="redis").redis_url()
    with pytest.raises(ConfigError, match="ANALYTICS_DATABASE_URL"):
        Settings(name="analytics").sql_url()


def test_redis_backend_rejects_sql_url() -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        Settings(url="postgresql://h/db", backend="redis")


def test_describe_formats_durations() -> None:
    d = Settings(query_timeout=0.25).describe()
    assert d["query_timeout"] == "250ms"
    assert d["max_lifetime"] == "30m"
    assert d["transaction_timeout"] == "off"
    assert set(d) == {f.name for f in dataclasses.fields(Settings)}


def test_warnings() -> None:
    assert any("no query timeout" in w for w in Settings().warnings())
    assert not any("no query timeout" in w for w in Settings(query_timeout=5).warnings())
    notes = Settings(query_timeout=1, lock_timeout=2).warnings()
    assert any("lock timeout can never fire" in w for w in notes)
    assert any("keepalive >= max_idle" in w for w in Settings(keepalive=600).warnings())
    assert not any("keepalive" in w for w in Settings(keepalive=30).warnings())


def test_frozen_and_hashable() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pool_size = 3  # type: ignore[misc]
    assert hash(s) == hash(Settings())
    assert s == Settings()
