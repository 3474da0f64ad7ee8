"""The Prometheus collector exposes real pools' counters, with no URL (password) in any label."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

import poolguard

prometheus_client = pytest.importorskip("prometheus_client")

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _scrape(pools: dict[str, Any]) -> str:
    from poolguard.metrics.prometheus import PoolguardCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(PoolguardCollector(pools))
    return prometheus_client.generate_latest(registry).decode()


def _value(text_: str, line_start: str) -> float:
    for line in text_.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start!r} not in scrape:\n{text_}")


def test_engine_and_redis_metrics(postgres_server: Any, redis_server: Any) -> None:
    engine = poolguard.create_engine(postgres_server.url, pool_size=2)
    cache = poolguard.redis.from_url(redis_server.url)
    for _ in range(3):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    cache.set("k", "v")
    cache.get("k")
    scrape = _scrape({"main": engine, "cache": cache})
    assert _value(scrape, 'poolguard_connects_total{backend="postgres",pool="main"}') >= 1
    assert _value(scrape, 'poolguard_requests_total{backend="redis",pool="cache"}') >= 2
    assert _value(scrape, 'poolguard_idle{backend="postgres",pool="main"}') >= 1
    assert (
        _value(scrape, 'poolguard_breaker_state{backend="postgres",pool="main",state="closed"}')
        == 1.0
    )
    assert postgres_server.password not in scrape
    assert "127.0.0.1" not in scrape  # labels carry names, never URLs
    engine.dispose()
    cache.close()
