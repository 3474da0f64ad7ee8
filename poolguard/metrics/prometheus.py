"""Prometheus collector for guarded pools (``pip install "poolguard[prometheus]"``).

A custom collector rather than Counter/Gauge objects updated on the hot path: Prometheus pulls,
so the cost is one ``stats()`` snapshot per scrape and nothing per query. Labels are the pool's
name and backend only — never a URL, so no password can reach a label::

    from prometheus_client import REGISTRY
    from poolguard.metrics.prometheus import PoolguardCollector

    REGISTRY.register(PoolguardCollector({"main": engine, "cache": redis_client}))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from poolguard._stats import stats

__all__ = ["PoolguardCollector"]

_GAUGES = {
    "size": "Open connections",
    "checked_out": "Connections in use",
    "idle": "Idle connections in the pool",
    "waiting": "Callers waiting for a connection",
}
_COUNTERS = {
    "requests": "Operations started",
    "connects": "Connections opened",
    "connect_failures": "Connection attempts that failed",
    "validations": "Checkout validations (pings)",
    "validation_failures": "Checkout validations that failed",
    "disconnects": "Connections found dead",
    "retries": "Retries (all reasons)",
    "give_ups": "Operations that stopped retrying and raised",
    "ambiguous": "Operations whose outcome was unknown (AmbiguousResultError)",
    "budget_exhausted": "Retries refused by the retry budget",
    "circuit_open_rejections": "Calls failed fast by the open circuit breaker",
}
_BREAKER_STATES = ("closed", "open", "half_open")


class PoolguardCollector(Collector):
    """Exposes ``poolguard_*`` metrics for the named pools (engines, Redis clients, pools)."""

    def __init__(self, pools: Mapping[str, Any]) -> None:
        self._pools = dict(pools)

    def add(self, name: str, pool: Any) -> None:
        self._pools[name] = pool

    def collect(self) -> Iterator[Any]:
        labels = ["pool", "backend"]
        snaps = [(name, stats(pool)) for name, pool in self._pools.items()]
        for key, doc in _GAUGES.items():
            g = GaugeMetricFamily(f"poolguard_{key}", doc, labels=labels)
            for name, s in snaps:
                g.add_metric([name, s["backend"]], s.get(key, 0))
            yield g
        for key, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"poolguard_{key}", doc, labels=labels)
            for name, s in snaps:
                c.add_metric([name, s["backend"]], s.get(key, 0))
            yield c
        yield from self._by_reason(snaps)
        breaker = GaugeMetricFamily(
            "poolguard_breaker_state",
            "1 for the breaker's current state",
            labels=[*labels, "state"],
        )
        wait = GaugeMetricFamily(
            "poolguard_acquire_wait_seconds",
            "Recent acquire waits (percentiles of a bounded reservoir)",
            labels=[*labels, "percentile"],
        )
        for name, s in snaps:
            for state in _BREAKER_STATES:
                breaker.add_metric(
                    [name, s["backend"], state], float(s["breaker"]["state"] == state)
                )
            for q in ("p50", "p95", "p99"):
                wait.add_metric([name, s["backend"], q], s["acquire_wait_ms"][q] / 1000)
        yield breaker
        yield wait

    def _by_reason(self, snaps: list[tuple[str, dict[str, Any]]]) -> Iterator[Any]:
        labels = ["pool", "backend", "reason"]
        evictions = CounterMetricFamily(
            "poolguard_evictions", "Connections retired, by reason", labels=labels
        )
        retries = CounterMetricFamily(
            "poolguard_retries_by_reason", "Retries, by classified reason", labels=labels
        )
        for name, s in snaps:
            for reason, n in s["evictions"].items():
                evictions.add_metric([name, s["backend"], reason], n)
            for reason, n in s["retries_by_reason"].items():
                retries.add_metric([name, s["backend"], reason], n)
        yield evictions
        yield retries
