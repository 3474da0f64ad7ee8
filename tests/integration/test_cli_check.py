"""``poolguard check`` end to end: a real subprocess against real servers.

Every test asserts that no password reaches stdout or stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# Generous: the check bounds itself far below this; this only keeps a bug from hanging CI.
RUN_TIMEOUT = 120
DISTINCT = "Zq9-d1st1nct1ve-pw"


def _clean_env(**env: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POOLGUARD_") and not k.endswith(("DATABASE_URL", "REDIS_URL"))
    }
    return {**base, **env}


def run_check(*args: str, env: Mapping[str, str], secrets: tuple[str, ...] = ()) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "poolguard", "check", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    for secret in secrets:
        assert secret not in proc.stdout, "password leaked to stdout"
        assert secret not in proc.stderr, "password leaked to stderr"
    return proc


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password, url
    return password


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.redis
def test_all_backends_ok_json(postgres_server: Any, mysql_server: Any, redis_server: Any) -> None:
    env = _clean_env(
        DATABASE_URL=postgres_server.url,
        REDIS_URL=redis_server.url,
        ANALYTICS_DATABASE_URL=mysql_server.url,
        POOLGUARD_QUERY_TIMEOUT="5s",
        POOLGUARD_LOCK_TIMEOUT="1s",
    )
    secrets = (password_of(postgres_server.url), password_of(mysql_server.url))
    proc = run_check("--json", "--name", "analytics", env=env, secrets=secrets)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert result["exit_code"] == 0
    assert result["mode"] == "env"
    by_target = {b["target"]: b for b in result["backends"]}
    assert set(by_target) == {"database", "redis", "analytics (database)"}
    pg, cache, my = by_target["database"], by_target["redis"], by_target["analytics (database)"]
    assert (pg["kind"], cache["kind"], my["kind"]) == ("postgresql", "redis", "mysql")
    assert pg["server"].startswith("PostgreSQL ")
    assert cache["server"].startswith("Redis ")
    assert my["server"].startswith(("MariaDB ", "MySQL "))
    for backend in result["backends"]:
        assert backend["ok"] is True
        assert backend["error"] is None
        assert len(backend["latency_samples_ms"]) == 5
        assert backend["latency_ms"] >= 0
        assert backend["tls"] is False
        assert backend["pool"]["pool_size"] >= 1
    assert pg["url"].startswith("postgresql+psycopg://")
    assert ":***@" in pg["url"]
    timeouts = {t["setting"]: t for t in pg["timeouts"]}
    assert timeouts["query_timeout"] == {
        "setting": "query_timeout",
        "value": "5s",
        "applied_as": "SET LOCAL statement_timeout",
        "accepted": True,
        "detail": None,
    }
    assert timeouts["lock_timeout"]["accepted"] is True
    assert {t["setting"]: t for t in my["timeouts"]}["query_timeout"]["accepted"] is True
    assert pg["facts"]["pgbouncer"]["detected"] is False


@pytest.mark.postgres
@pytest.mark.redis
def test_text_table(postgres_server: Any, redis_server: Any) -> None:
    env = _clean_env(DATABASE_URL=postgres_server.url, REDIS_URL=redis_server.url)
    proc = run_check(env=env, secrets=(password_of(postgres_server.url),))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("poolguard check: 2 backends, all OK")
    for needle in ("database  OK", "redis  OK", "server", "latency", "ms median", "timeouts"):
        assert needle in out
    assert "statement_timeout not set" in out
    assert "no query timeout configured" in out  # the SQL default has none: warned


@pytest.mark.mysql
def test_mysql_idle_kill_warning(mysql_server: Any) -> None:
    env = _clean_env(DATABASE_URL=mysql_server.url, POOLGUARD_MAX_IDLE="off")
    proc = run_check("--json", env=env, secrets=(password_of(mysql_server.url),))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backend = json.loads(proc.stdout)["backends"][0]
    assert backend["facts"]["wait_timeout_s"] > 0
    assert any("(wait_timeout)" in w for w in backend["warnings"])


@pytest.mark.postgres
def test_wrong_password_fails_without_leaking(postgres_server: Any) -> None:
    url = with_password(postgres_server.url, DISTINCT)
    proc = run_check("--json", env=_clean_env(DATABASE_URL=url), secrets=(DISTINCT,))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is False
    backend = result["backends"][0]
    assert backend["ok"] is False
    assert "password authentication failed" in backend["error"]


@pytest.mark.mysql
def test_mysql_wrong_password(mysql_server: Any) -> None:
    url = with_password(mysql_server.url, DISTINCT)
    proc = run_check(env=_clean_env(DATABASE_URL=url), secrets=(DISTINCT,))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Access denied" in proc.stdout


@pytest.mark.redis
def test_redis_password_never_shown(redis_server: Any) -> None:
    parts = urlsplit(redis_server.url)
    url = f"redis://:{DISTINCT}@{parts.hostname}:{parts.port}/0"
    proc = run_check("--json", env=_clean_env(REDIS_URL=url), secrets=(DISTINCT,))
    backend = json.loads(proc.stdout)["backends"][0]
    assert backend["url"] == f"redis://:***@{parts.hostname}:{parts.port}/0"
    # redis-py tolerates AUTH against a password-less server; one with a password rejects it.
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr


def test_refused_port_fails() -> None:
    from poolguard.testing import free_port

    url = f"postgresql://app:{DISTINCT}@127.0.0.1:{free_port()}/app"
    proc = run_check(env=_clean_env(DATABASE_URL=url), secrets=(DISTINCT,))
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    assert "app:***@127.0.0.1" in proc.stdout


@pytest.mark.parametrize(
    ("scheme", "connect_timeout"), [("postgresql", "1s"), ("mysql", "500ms"), ("redis", "500ms")]
)
def test_unanswered_connect_is_bounded(scheme: str, connect_timeout: str) -> None:
    # A port whose SYNs are dropped: only the connect timeout can end the attempt.
    from poolguard.testing import DeafListener

    deaf = DeafListener()
    try:
        auth = "" if scheme == "redis" else "app"
        url = f"{scheme}://{auth}:{DISTINCT}@{deaf.host}:{deaf.port}/" + (
            "0" if scheme == "redis" else "app"
        )
        var = "REDIS_URL" if scheme == "redis" else "DATABASE_URL"
        env = _clean_env(**{var: url, "POOLGUARD_CONNECT_TIMEOUT": connect_timeout})
        proc = run_check("--json", env=env, secrets=(DISTINCT,))
    finally:
        deaf.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    backend = json.loads(proc.stdout)["backends"][0]
    assert backend["ok"] is False
    assert backend["error"]


@pytest.mark.postgres
@pytest.mark.chaos
@pytest.mark.slow
def test_slow_server_after_connect_is_bounded(postgres_server: Any, fault_proxy: Any) -> None:
    # Every chunk delayed 0.5 s: the login completes within the connect timeout, then the
    # queries exceed --timeout and the watchdog ends the check instead of waiting.
    proxy = fault_proxy(postgres_server)
    proxy.latency(0.5)
    env = _clean_env(DATABASE_URL=proxy.url(postgres_server.url), POOLGUARD_CONNECT_TIMEOUT="30s")
    proc = run_check(
        "--json", "--timeout", "1s", env=env, secrets=(password_of(postgres_server.url),)
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["backends"][0]["ok"] is False


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_pgbouncer_detected(pgbouncer_server: Any) -> None:
    env = _clean_env(DATABASE_URL=pgbouncer_server.url, POOLGUARD_PGBOUNCER="off")
    proc = run_check("--json", env=env, secrets=(password_of(pgbouncer_server.url),))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backend = json.loads(proc.stdout)["backends"][0]
    assert backend["facts"]["pgbouncer"]["detected"] is True
    assert any("POOLGUARD_PGBOUNCER=off" in w for w in backend["warnings"])
    # SET LOCAL works through transaction pooling: the timeouts were accepted.
    assert all(t["accepted"] is not False for t in backend["timeouts"])


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"POOLGUARD_QUERY_TIMEOUT": "fast"}, "POOLGUARD_QUERY_TIMEOUT"),
        ({"POOLGUARD_POOL_SIZE": "0"}, "POOLGUARD_POOL_SIZE"),
        ({"POOLGUARD_REDIS_CONNECT_TIMEOUT": "-1s"}, "POOLGUARD_REDIS_CONNECT_TIMEOUT"),
        ({"POOLGUARD_QUERY_TIMEOUTS": "5s"}, "POOLGUARD_QUERY_TIMEOUTS"),
        ({"DATABASE_URL": f"sqlite://u:{DISTINCT}@/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": f"postgresql+pg8000://u:{DISTINCT}@h/db"}, "DATABASE_URL"),
        ({"REDIS_URL": f"http://:{DISTINCT}@h"}, "REDIS_URL"),
    ],
)
def test_bad_configuration_exits_2(env: dict[str, str], variable: str) -> None:
    # DATABASE_URL points nowhere reachable: configuration is checked before connecting.
    full = _clean_env(**{"DATABASE_URL": "postgresql://u@192.0.2.1/db", **env})
    proc = run_check(env=full, secrets=(DISTINCT,))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert variable in proc.stderr
    assert proc.stdout == ""
    proc = run_check("--json", env=full, secrets=(DISTINCT,))
    assert proc.returncode == 2
    result = json.loads(proc.stdout)
    assert result["exit_code"] == 2
    assert result["error"]["variable"] == variable
    assert variable in result["error"]["message"]


def test_unknown_variable_suggestion() -> None:
    env = _clean_env(DATABASE_URL="postgresql://u@192.0.2.1/db", POOLGUARD_MAX_LIFETME="1h")
    proc = run_check(env=env)
    assert proc.returncode == 2
    assert "did you mean POOLGUARD_MAX_LIFETIME?" in proc.stderr


def test_missing_named_database_exits_2() -> None:
    env = _clean_env(DATABASE_URL="postgresql://u@192.0.2.1/db")
    proc = run_check("--name", "reports", env=env)
    assert proc.returncode == 2
    assert "REPORTS_DATABASE_URL" in proc.stderr


def test_bad_timeout_option_exits_2() -> None:
    proc = run_check("--timeout", "soon", env=_clean_env(DATABASE_URL="postgresql://h/db"))
    assert proc.returncode == 2
    assert "--timeout" in proc.stderr


def test_console_script_and_version() -> None:
    script = Path(sys.executable).parent / "poolguard"
    if not script.exists():
        pytest.skip("the poolguard console script is not installed next to this Python")
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("poolguard ")
    proc = subprocess.run(
        [str(script), "check", "--timeout", "x"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_clean_env(DATABASE_URL="postgresql://h/db"),
    )
    assert proc.returncode == 2


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.redis
@pytest.mark.slow
def test_local_mode_starts_and_stops_servers() -> None:
    proc = run_check("--json", "--local", env=_clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["mode"] == "local"
    kinds = sorted(b["kind"] for b in result["backends"])
    assert kinds == ["mysql", "postgresql", "redis"]
    assert all(b["ok"] for b in result["backends"])


@pytest.mark.parametrize("as_json", [False, True])
def test_no_url_at_all_fails_instead_of_checking_local_servers(as_json: bool) -> None:
    # A deploy-time check with no URL must not report "all OK" on throw-away local servers.
    proc = run_check(*(["--json"] if as_json else []), env=_clean_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nothing is configured" in proc.stderr
    assert "--local" in proc.stderr
    if as_json:
        result = json.loads(proc.stdout)
        assert (result["ok"], result["exit_code"], result["backends"]) == (False, 1, [])
        assert "nothing is configured" in result["notes"][0]
    else:
        assert proc.stdout.startswith("poolguard check: 0 backends, nothing checked")
        assert "all OK" not in proc.stdout
