"""The process-wide registry, global event listeners, timing samples and the JSON formatter."""

from __future__ import annotations

import gc
import io
import json
import logging

from poolguard.core import stats as core_stats
from poolguard.core.stats import PoolEvent, PoolStats, Samples
from poolguard.logs import JsonFormatter, configure_json


def test_every_pool_registers_weakly() -> None:
    stats = PoolStats("reg_a", "sql")
    assert stats in core_stats.registered()
    del stats
    gc.collect()
    assert all(s.name != "reg_a" for s in core_stats.registered())


def test_listeners_get_every_event_with_fields() -> None:
    seen: list[PoolEvent] = []
    stats = PoolStats("ev", "postgres")
    stats.target = "db.example:5432"
    core_stats.add_listener(seen.append)
    try:
        stats.retry(1, "admin_shutdown", 0.02, OSError(), disposition="retry", rerun=True)
        stats.give_up(2, "admin_shutdown", "budget", OSError(), budget=True)
        stats.ambiguous(None, "commit_lost", OSError())
        stats.evict("idle", 3.0, 2.0)
        stats.breaker_changed("closed", "open")
        stats.acquire_timeout(0.5)
    finally:
        core_stats.remove_listener(seen.append)
    stats.retry(1, "x", 0.0, OSError())  # removed: not seen
    kinds = [e.kind for e in seen]
    assert kinds == ["transaction_rerun", "give_up", "ambiguous", "evict", "breaker",
                     "acquire_timeout"]  # fmt: skip
    assert seen[0].fields()["target"] == "db.example:5432"
    assert seen[4].old == "closed"
    assert seen[4].reason == "open"
    snap = stats.snapshot()
    assert (snap["transaction_reruns"], snap["give_ups"], snap["budget_exhausted"]) == (1, 1, 1)
    assert (snap["ambiguous"], snap["acquire_timeouts"], snap["breaker_transitions"]) == (1, 1, 1)


def test_a_raising_listener_is_ignored() -> None:
    def boom(_event: PoolEvent) -> None:
        raise RuntimeError("listener bug")

    stats = PoolStats("boom", "sql")
    core_stats.add_listener(boom)
    try:
        stats.retry(1, "r", 0.0, OSError())
    finally:
        core_stats.remove_listener(boom)
    assert stats.count("retries") == 1


def test_samples_only_while_sampling_and_bounded() -> None:
    before = PoolStats("s_before", "sql")
    before.record_wait(0.1)
    assert before.sink is None
    core_stats.set_sampling(3)
    try:
        after = PoolStats("s_after", "sql")
        for stats in (before, after):
            for i in range(5):
                stats.record_wait(float(i))
            assert stats.sink is not None
            assert Samples.drain(stats.sink.wait) == [2.0, 3.0, 4.0]  # oldest dropped
            assert Samples.drain(stats.sink.wait) == []
    finally:
        core_stats.set_sampling(None)
    assert before.sink is None


def test_json_lines_carry_the_fields_and_no_password() -> None:
    stream = io.StringIO()
    handler = configure_json(stream, "DEBUG", logger="poolguard.unit")
    try:
        stats = PoolStats("json", "unit")
        stats.log = logging.getLogger("poolguard.unit")
        stats.target = "h:5432"
        stats.retry(1, "admin_shutdown", 0.5, OSError("x"), disposition="retry")
        stats.log.info("connecting to postgresql://u:s3cret@h/db")
    finally:
        logging.getLogger("poolguard.unit").removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "retry"
    assert (first["pool"], first["backend"], first["target"]) == ("json", "unit", "h:5432")
    assert (first["attempt"], first["reason"], first["delay"]) == (1, "admin_shutdown", 0.5)
    assert first["disposition"] == "retry"
    assert first["error_type"] == "OSError"
    assert "event" not in second
    assert "s3cret" not in stream.getvalue()
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "m"})), str)
