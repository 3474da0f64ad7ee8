"""Live reconfiguration (poolguard.reconfigure) of the native psycopg_pool pools."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import poolguard
import poolguard.postgres

pytestmark = pytest.mark.postgres


def test_query_timeout_change_reaches_pooled_and_new_connections(
    postgres_server: Any, make_pool: Any
) -> None:
    pool = make_pool(postgres_server.url, pool_size=2, max_overflow=0)
    assert pool.fetchval("SELECT 1 FROM pg_sleep(0.5)") == 1  # no timeout yet
    poolguard.reconfigure(pool, query_timeout="200ms", acquire_timeout=3)
    assert pool.fetchval("SHOW statement_timeout") == "200ms"
    with pytest.raises(poolguard.QueryTimeout) as info:
        pool.fetchval("SELECT pg_sleep(2)")
    assert isinstance(info.value, psycopg.errors.QueryCanceled)
    assert pool.kwargs["options"] == "-c statement_timeout=200"  # connections opened from now
    assert pool.timeout == 3
    snap = pool.stats()
    assert snap["reconfigured"] == 1
    assert snap["settings"]["query_timeout"] == 0.2
    poolguard.reconfigure(pool, query_timeout=None)
    assert "options" not in pool.kwargs or "statement_timeout" not in pool.kwargs["options"]
    for _ in range(2):  # every pooled session opened under the old value is replaced
        assert pool.fetchval("SHOW statement_timeout") == "0"
    assert pool.fetchval("SELECT 1 FROM pg_sleep(0.5)") == 1


def test_retry_attempts_change_under_a_killed_session(
    postgres_server: Any, make_pool: Any, app_name: str
) -> None:
    pool = make_pool(postgres_server.url, pool_size=1, max_overflow=0, validate_idle=None)
    assert pool.fetchval("SELECT 1") == 1
    postgres_server.kill_connections(application_name=app_name)
    assert pool.fetchval("SELECT 2") == 2  # the dead session met, the read retried
    retried = pool.stats()["retries"]
    assert retried >= 1
    poolguard.reconfigure(pool, retry_attempts=1)
    pool.wait(timeout=10)
    assert pool.fetchval("SELECT 1") == 1
    postgres_server.kill_connections(application_name=app_name)
    with pytest.raises(psycopg.OperationalError):
        pool.fetchval("SELECT 2")
    assert pool.stats()["retries"] == retried


def test_bad_value_leaves_the_pool_as_it_was(postgres_server: Any, make_pool: Any) -> None:
    pool = make_pool(postgres_server.url, query_timeout=5)
    kwargs = dict(pool.kwargs)
    with pytest.raises(poolguard.ConfigError, match="query_timeout"):
        poolguard.reconfigure(pool, retry_attempts=5, query_timeout="soon")
    with pytest.raises(poolguard.ConfigError, match="max_overflow"):
        poolguard.reconfigure(pool, max_overflow=3)
    assert pool.kwargs == kwargs
    assert pool.stats()["settings"]["retry_attempts"] == 3
    assert pool.fetchval("SHOW statement_timeout") == "5s"


async def test_async_pool(postgres_server: Any, make_async_pool: Any) -> None:
    pool = await make_async_pool(postgres_server.url, pool_size=1, max_overflow=0)
    assert await pool.fetchval("SELECT 1 FROM pg_sleep(0.5)") == 1
    poolguard.reconfigure(pool, query_timeout="200ms")
    with pytest.raises(poolguard.QueryTimeout):
        await pool.fetchval("SELECT pg_sleep(2)")
    assert poolguard.stats(pool)["reconfigured"] == 1
