"""poolguard's log records outside core/stats.py's events carry the same JSON fields (``event``,
``pool``, ``backend``, ``target``) through :class:`poolguard.logs.JsonFormatter`, against real
servers: a live reconfiguration and a refused SIGHUP reload, a Redis pub/sub resubscription
after its connection was killed, a configuration note at engine creation, a keepalive sweep that
raised, and a reset after fork that raised.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import text

import poolguard
import poolguard.redis
from poolguard.core import keepalive
from poolguard.logs import JsonFormatter

pytestmark = [pytest.mark.slow]

HANG_GUARD = 30.0

Lines = Callable[[str], list[dict[str, Any]]]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    """``json_lines(event)``: the JSON lines poolguard logged so far with that ``event``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("poolguard")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    def lines(event: str) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [p for p in parsed if p.get("event") == event]

    yield lines
    root.removeHandler(handler)
    root.setLevel(level)


def until(predicate: Callable[[], bool], what: str) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never happened"
        time.sleep(0.02)


def _one(lines: Lines, event: str, pool: str, backend: str) -> dict[str, Any]:
    found = [line for line in lines(event) if line["pool"] == pool]
    assert len(found) == 1, lines(event)
    line = found[0]
    assert line["backend"] == backend
    assert line["target"]
    assert "secret" not in json.dumps(line)
    return line


@pytest.mark.postgres
def test_reconfigure_and_a_refused_sighup_reload(postgres_server: Any, json_lines: Lines) -> None:
    engine = poolguard.create_engine(postgres_server.url, name="logs_reconf")
    environ = {"POOLGUARD_LOGS_RECONF_QUERY_TIMEOUT": "5s"}
    previous = signal.getsignal(signal.SIGHUP)
    try:
        poolguard.reconfigure(engine, query_timeout="2s")
        line = _one(json_lines, "reconfigure", "logs_reconf", "postgres")
        assert line["changed"] == {"query_timeout": ["off", "2s"]}
        assert line["generation"] == 1

        poolguard.reload_on_sighup(engine, environ=environ)
        environ["POOLGUARD_LOGS_RECONF_QUERY_TIMEOUT"] = "soon"
        os.kill(os.getpid(), signal.SIGHUP)
        until(lambda: json_lines("reconfigure_failed") != [], "the refused reload's record")
        line = _one(json_lines, "reconfigure_failed", "logs_reconf", "postgres")
        assert line["variable"]
    finally:
        signal.signal(signal.SIGHUP, previous)
        engine.dispose()


@pytest.mark.redis
def test_redis_resubscribe(redis_server: Any, json_lines: Lines) -> None:
    client = poolguard.redis.from_url(redis_server.url, name="logs_sub", client_name="logs-sub")
    admin = redis.Redis.from_url(redis_server.url)
    gaps: list[Any] = []
    pubsub = client.pubsub(
        ignore_subscribe_messages=True, reconnect=True, on_resubscribe=gaps.append
    )
    try:
        pubsub.subscribe("logs-sub-channel")
        pubsub.get_message(timeout=0.1)
        killed = [c["id"] for c in admin.client_list() if c.get("name") == "logs-sub"]
        assert killed
        for client_id in killed:
            admin.client_kill_filter(_id=client_id)

        def resubscribed() -> bool:
            pubsub.get_message(timeout=0.1)
            return bool(gaps)

        until(resubscribed, "the resubscription")
        line = _one(json_lines, "resubscribe", "logs_sub", "redis")
        assert line["channels"] == 1
        assert line["patterns"] == 0
        assert line["reason"] == "resubscribe"
        assert line["level"] == "WARNING"
    finally:
        pubsub.close()
        client.close()
        admin.close()


@pytest.mark.postgres
def test_engine_configuration_note(postgres_server: Any, json_lines: Lines) -> None:
    # keepalive >= max_idle: Settings.warnings() has a note, logged at creation.
    engine = poolguard.create_engine(
        postgres_server.url, name="logs_note", keepalive=60, max_idle=30
    )
    try:
        notes = [x for x in json_lines("config_warning") if "keepalive >=" in x["message"]]
        assert len(notes) == 1
        assert notes[0]["pool"] == "logs_note"
        assert notes[0]["backend"] == "postgres"
        assert notes[0]["target"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_keepalive_sweep_error(
    postgres_server: Any, json_lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = poolguard.create_engine(postgres_server.url, name="logs_sweep", keepalive=0.05)
    try:

        def broken(now: float) -> float | None:
            raise RuntimeError("a bug in a sweep")

        monkeypatch.setattr(engine.pool, "keepalive_sweep", broken)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert keepalive.is_watched(engine.pool)
        until(lambda: json_lines("keepalive_error") != [], "the failed sweep's record")
        line = next(x for x in json_lines("keepalive_error") if x["pool"] == "logs_sweep")
        assert line["backend"] == "postgres"
        assert line["target"]
        assert line["error_type"] == "RuntimeError"
        assert "a bug in a sweep" in line["exc"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_fork_reset_failure(postgres_server: Any, json_lines: Lines) -> None:
    from poolguard.integrations import _fork
    from poolguard.integrations.sqlalchemy.engine import guard_of

    engine = poolguard.create_engine(postgres_server.url, name="logs_fork")
    try:
        try:
            raise OSError("cannot reset")
        except OSError as exc:
            _fork._failed("resetting an engine's pool", guard_of(engine).guard, exc)
        line = _one(json_lines, "fork_reset_failed", "logs_fork", "postgres")
        assert line["error_type"] == "OSError"
    finally:
        engine.dispose()
