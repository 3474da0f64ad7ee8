"""``poolguard check`` warns when ``POOLGUARD_KEEPALIVE`` is at or above the server's idle limit
(MariaDB ``wait_timeout``, PostgreSQL ``idle_session_timeout``, Redis ``timeout``): the
keepalive ping would find those connections dead instead of keeping them alive. A real
subprocess against real servers whose limit is made short (2 s) for the test; below the limit,
no idle-kill warning at all (the pings keep the connections, whatever ``max_idle`` says).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest
import redis

pytestmark = [pytest.mark.slow]

RUN_TIMEOUT = 120
LIMIT = 2  # seconds: the server's idle limit during these tests


def _check(env: dict[str, str]) -> dict[str, Any]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POOLGUARD_") and not k.endswith(("DATABASE_URL", "REDIS_URL"))
    }
    proc = subprocess.run(
        [sys.executable, "-m", "poolguard", "check", "--json"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backend: dict[str, Any] = json.loads(proc.stdout)["backends"][0]
    assert backend["ok"], backend
    return backend


def _keepalive_warnings(backend: dict[str, Any]) -> list[str]:
    return [w for w in backend["warnings"] if "POOLGUARD_KEEPALIVE" in w]


def _idle_warnings(backend: dict[str, Any], variable: str) -> list[str]:
    return [w for w in backend["warnings"] if f"({variable})" in w]


@pytest.fixture
def short_wait_timeout(mysql_server: Any) -> Iterator[str]:
    parts = urlsplit(mysql_server.admin_url)
    admin = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        autocommit=True,
    )
    with admin.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.wait_timeout")
        row = cur.fetchone()
        assert row is not None
        before = int(row[0])
        cur.execute(f"SET GLOBAL wait_timeout = {LIMIT}")  # sessions opened from now on
    try:
        yield mysql_server.url
    finally:
        with admin.cursor() as cur:
            cur.execute(f"SET GLOBAL wait_timeout = {before}")
        admin.close()


@pytest.mark.mysql
def test_mariadb_wait_timeout(short_wait_timeout: str) -> None:
    env = {"DATABASE_URL": short_wait_timeout, "POOLGUARD_MAX_IDLE": "1s"}
    above = _check({**env, "POOLGUARD_KEEPALIVE": "5s"})
    assert above["facts"]["wait_timeout_s"] == LIMIT
    [warning] = _keepalive_warnings(above)
    assert "(wait_timeout)" in warning
    assert "below 2s" in warning
    assert _keepalive_warnings(_check({**env, "POOLGUARD_KEEPALIVE": "2s"}))  # at the limit
    below = _check({**env, "POOLGUARD_KEEPALIVE": "1s", "POOLGUARD_MAX_IDLE": "off"})
    assert _idle_warnings(below, "wait_timeout") == []


@pytest.mark.postgres
def test_postgres_idle_session_timeout(postgres_server: Any) -> None:
    # The check's own session gets the server setting through libpq options, as an app
    # whose role or database has idle_session_timeout set would.
    sep = "&" if "?" in postgres_server.url else "?"
    url = f"{postgres_server.url}{sep}options=-c%20idle_session_timeout%3D{LIMIT}s"
    above = _check({"DATABASE_URL": url, "POOLGUARD_KEEPALIVE": "3s"})
    if above["facts"]["idle_session_timeout_s"] == 0:
        pytest.skip("idle_session_timeout needs PostgreSQL >= 14")
    assert above["facts"]["idle_session_timeout_s"] == LIMIT
    [warning] = _keepalive_warnings(above)
    assert "(idle_session_timeout)" in warning
    below = _check({"DATABASE_URL": url, "POOLGUARD_KEEPALIVE": "500ms"})
    assert _idle_warnings(below, "idle_session_timeout") == []
    off = _check({"DATABASE_URL": url})  # no keepalive: the max_idle warning, as before
    assert _keepalive_warnings(off) == []
    assert _idle_warnings(off, "idle_session_timeout")


@pytest.mark.redis
def test_redis_timeout(redis_server: Any) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    before = admin.config_get("timeout")["timeout"]
    admin.config_set("timeout", LIMIT)
    try:
        above = _check({"REDIS_URL": redis_server.url, "POOLGUARD_KEEPALIVE": "2s"})
        assert above["facts"]["server_idle_timeout_s"] == LIMIT
        [warning] = _keepalive_warnings(above)
        assert "(timeout)" in warning
        below = _check({"REDIS_URL": redis_server.url, "POOLGUARD_KEEPALIVE": "1s"})
        assert _keepalive_warnings(below) == []
    finally:
        admin.config_set("timeout", before)
        admin.close()
