"""The pure parts of ``poolguard check``: report helpers, rendering, runner bounds, CLI errors."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from poolguard import cli
from poolguard.check import runner
from poolguard.check.postgres import _setting_ms
from poolguard.check.render import render_text
from poolguard.check.report import (
    BackendReport,
    is_loopback,
    scrub,
    warn_server_idle_kill,
    warn_tls,
)
from poolguard.config import Settings
from poolguard.errors import ConfigError

SECRET = "Zq9-s3cr3t"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [(None, True), ("", True), ("/var/run/postgresql", True), ("localhost", True),
     ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
     ("10.0.0.5", False), ("db.example.com", False), ("2001:db8::1", False)],
)  # fmt: skip
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_scrub_is_recursive() -> None:
    value = {"a": [f"x{SECRET}y", {"b": SECRET}], "n": 3, "none": None}
    assert scrub(value, [SECRET, ""]) == {"a": ["x***y", {"b": "***"}], "n": 3, "none": None}
    assert scrub(value, []) is value


def _report(**settings: Any) -> BackendReport:
    return BackendReport.start("database", Settings(**settings), "postgresql")


def test_report_start_redacts_and_describes() -> None:
    report = _report(url=f"postgres://u:{SECRET}@db/app", query_timeout=0.25)
    assert report.url == "postgresql+psycopg://u:***@db/app"
    assert report.pool["query_timeout"] == "250ms"
    assert "url" not in report.pool
    assert SECRET not in json.dumps(report.to_dict())


def test_fail_redacts_driver_messages() -> None:
    report = _report()
    report.fail(RuntimeError(f"could not use host=h password={SECRET}"))
    assert report.error is not None
    assert SECRET not in report.error
    assert report.error.startswith("RuntimeError: ")


def test_to_dict_scrubs_secrets_anywhere() -> None:
    report = _report()
    report.warnings.append(f"odd message quoting {SECRET}")
    assert SECRET not in json.dumps(report.to_dict([SECRET]))


def test_warn_tls() -> None:
    report = _report()
    report.tls = False
    warn_tls(report, "127.0.0.1")
    assert report.warnings == _report().warnings
    warn_tls(report, "db.example.com")
    assert "TLS is off to the non-loopback host db.example.com" in report.warnings[-1]
    report.tls = True
    before = list(report.warnings)
    warn_tls(report, "db.example.com")
    assert report.warnings == before


@pytest.mark.parametrize(
    ("max_idle", "server", "warned"),
    [(600.0, 28800.0, False), (None, 28800.0, True), (600.0, 300.0, True), (600.0, 0.0, False),
     (296.0, 300.0, True), (290.0, 300.0, False)],
)  # fmt: skip
def test_server_idle_kill(max_idle: float | None, server: float, warned: bool) -> None:
    report = _report(max_idle=max_idle)
    before = len(report.warnings)
    warn_server_idle_kill(report, Settings(max_idle=max_idle), "wait_timeout", server)
    assert (len(report.warnings) > before) is warned


@pytest.mark.parametrize(
    ("text", "ms"),
    [("0", 0.0), ("250ms", 250.0), ("30s", 30000.0), ("5min", 300000.0), ("1h", 3600000.0),
     ("2d", 172800000.0), ("junk", 0.0)],
)  # fmt: skip
def test_pg_setting_ms(text: str, ms: float) -> None:
    assert _setting_ms(text) == ms


def test_render_text_failed_backend() -> None:
    report = _report(url="postgres://u:pw@db/app")
    report.error = "OperationalError: connection refused"
    check = report.timeout("query_timeout", 5.0, "SET LOCAL statement_timeout", accepted=False)
    check.detail = "permission denied"
    report.timeout("transaction_timeout", None, "client deadline")
    text = render_text({"backends": [report.to_dict()], "notes": ["a note"]})
    assert text.startswith("poolguard check: 1 backend, 1 of 1 FAILED\nnote: a note\n")
    assert "database  FAILED  postgresql+psycopg://u:***@db/app" in text
    assert "REFUSED" in text
    assert "query_timeout: permission denied" in text
    assert "pgbouncer=auto" in text


def test_hard_bound() -> None:
    redis = Settings(backend="redis", connect_timeout=0.5)
    assert runner.hard_bound(redis, 1.0) == 0.5 + 1.0 + runner.GRACE
    sql = Settings(connect_timeout=0.5)  # libpq: whole seconds, at least 2
    assert runner.hard_bound(sql, 1.0) == 2.0 + 1.0 + runner.GRACE
    assert runner.hard_bound(Settings(connect_timeout=None), 3.0) == 3.0 + 3.0 + runner.GRACE


def test_run_targets_reports_a_hung_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(settings: Settings, report: BackendReport, op_timeout: float) -> None:
        release.wait(30)

    monkeypatch.setattr(runner, "_probe_for", lambda settings: ("redis", hang))
    monkeypatch.setattr(runner, "GRACE", 0.05)
    settings = Settings(url="redis://h", backend="redis", connect_timeout=0.05)
    try:
        [report] = runner.run_targets([runner.Target("redis", settings)], 0.05)
    finally:
        release.set()
    assert report.ok is False
    assert report.error is not None
    assert "no answer within" in report.error


def test_run_targets_reports_probe_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(settings: Settings, report: BackendReport, op_timeout: float) -> None:
        raise OSError(f"refused, password={SECRET}")

    monkeypatch.setattr(runner, "_probe_for", lambda settings: ("postgresql", boom))
    target = runner.Target("database", Settings(url=f"postgres://u:{SECRET}@h/db"))
    [report] = runner.run_targets([target], 1.0)
    assert report.ok is False
    assert report.error is not None
    assert SECRET not in report.error


def test_target_secrets() -> None:
    assert runner.Target("d", Settings(url=f"postgres://u:{SECRET}@h/db")).secrets == [SECRET]
    redis = Settings(url=f"redis://:{SECRET}@h/0", backend="redis")
    assert runner.Target("r", redis).secrets == [SECRET]
    assert runner.Target("d", Settings(url="postgres://h/db")).secrets == []


def test_targets_from_env() -> None:
    env = {
        "DATABASE_URL": "postgres://h/db",
        "CACHE_REDIS_URL": "redis://c/0",
        "OLAP_DATABASE_URL": "mysql://o/db",
    }
    labels = [t.label for t in runner.targets_from_env(env, ["cache", "olap"])]
    assert labels == ["database", "cache (redis)", "olap (database)"]
    with pytest.raises(ConfigError, match="REPORTS_DATABASE_URL nor REPORTS_REDIS_URL"):
        runner.targets_from_env(env, ["reports"])
    with pytest.raises(ConfigError, match="POOLGUARD_REDIS_POOL_SIZE"):
        runner.targets_from_env({**env, "POOLGUARD_REDIS_POOL_SIZE": "x"})


def test_main_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POOLGUARD_POOL_SIZE", "many")
    assert cli.main(["check", "--json"]) == cli.EXIT_BAD_CONFIG
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["variable"] == "POOLGUARD_POOL_SIZE"
    assert "POOLGUARD_POOL_SIZE='many'" in err


@pytest.mark.parametrize("timeout", ["0", "-1s", "soon"])
def test_check_rejects_bad_timeout(timeout: str) -> None:
    with pytest.raises(ConfigError, match="--timeout"):
        cli.check({"DATABASE_URL": "postgres://h/db"}, local=False, names=(), timeout=timeout)
