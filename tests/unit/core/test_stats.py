"""PoolStats: lock-free counters, waits, events, hooks, snapshot."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from poolguard.core.stats import (
    EVICTION_REASONS,
    BreakerEvent,
    DisconnectEvent,
    EvictEvent,
    Hooks,
    PoolStats,
)


def test_counters() -> None:
    stats = PoolStats("db1", "sql")
    assert stats.count("connects") == 0
    stats.incr("connects")
    stats.incr("connects", 5)
    stats.incr("connects", 0)
    assert stats.count("connects") == 6
    with pytest.raises(ValueError, match="only go up"):
        stats.incr("connects", -1)
    assert stats.count("never") == 0


def test_counters_are_exact_under_threads() -> None:
    stats = PoolStats("db1", "sql")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for i in range(2000):
            stats.incr("requests")
            stats.incr(f"retries.r{i % 7}")  # keys created concurrently too

    try:
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    snap = stats.snapshot()
    assert snap["requests"] == 32_000
    assert sum(snap["retries_by_reason"].values()) == 32_000
    assert stats.count("requests") == 32_000


def test_snapshot_shape_and_gauges() -> None:
    stats = PoolStats("db1", "redis", gauges=lambda: {"size": 3, "idle": 2})
    for ms in range(1, 101):
        stats.record_wait(ms / 1000)
    stats.evict("lifetime", age=1800.0, idle=1.0)
    stats.evict("idle")
    stats.disconnect("connection_reset")
    stats.breaker_changed("closed", "open")
    snap = stats.snapshot()
    assert (snap["name"], snap["backend"], snap["size"], snap["idle"]) == ("db1", "redis", 3, 2)
    assert snap["checked_out"] == 0
    assert snap["waiting"] == 0
    assert snap["evictions"] == {r: int(r in ("lifetime", "idle")) for r in EVICTION_REASONS}
    assert snap["disconnects"] == 1
    assert snap["breaker"] == {"state": "open", "opened": 1, "waits": 0}
    waits = snap["acquire_wait_ms"]
    assert waits["count"] == 100
    assert waits["p50"] == pytest.approx(51.0)
    assert waits["p99"] == pytest.approx(99.0)
    assert waits["max"] == pytest.approx(100.0)
    empty = PoolStats("x", "sql").snapshot()["acquire_wait_ms"]
    assert empty == {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}


def test_events_reach_hooks_and_bad_hooks_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    got: list[object] = []

    def bad(event: object) -> None:
        raise RuntimeError("boom")

    hooks = Hooks(on_disconnect=[bad, got.append], on_evict=[got.append], on_breaker=[got.append])
    stats = PoolStats("db1", "sql", hooks=hooks)
    err = OSError("reset")
    with caplog.at_level(logging.ERROR, logger="poolguard.sql"):
        stats.disconnect("connection_reset", err)
    stats.evict("validation", 2.0, 3.0)
    stats.breaker_changed("open", "half_open")
    assert got == [
        DisconnectEvent("db1", "connection_reset", err),
        EvictEvent("db1", "validation", 2.0, 3.0),
        BreakerEvent("db1", "open", "half_open"),
    ]
    assert any("raised; ignored" in r.getMessage() for r in caplog.records)


def test_prebound_counter_shares_the_count() -> None:
    stats = PoolStats("db1", "sql")
    bump = stats.counter("requests")
    bump()
    stats.incr("requests")
    bump()
    assert stats.count("requests") == 3
    assert stats.snapshot()["requests"] == 3
