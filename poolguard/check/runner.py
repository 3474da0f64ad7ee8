"""Which backends to check, and running each probe under a hard time bound.

:func:`targets_from_env` (or :func:`local_targets` for ``--local``) says what to check,
:func:`run_targets` runs the probes of ``postgres.py``, ``mysql.py`` and ``redis.py``;
``poolguard/cli.py`` calls both.

Every probe runs in a daemon thread joined with a bound of ``connect + --timeout + grace``:
the drivers' own timeouts should fire first, but a check must never hang whatever the server
does (frozen, blackholed), and a daemon thread cannot keep the process alive.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import sqlalchemy

from poolguard.check.report import BackendReport
from poolguard.config import Settings, dialect_of
from poolguard.config.env import url_variable
from poolguard.config.settings import Backend
from poolguard.errors import ConfigError

__all__ = ["Target", "local_targets", "run_targets", "targets_from_env"]

#: Seconds a probe may overrun its own timeouts before it is reported as hung.
GRACE = 1.0
LIBPQ_MIN_CONNECT_TIMEOUT = 2.0

Probe = Callable[[Settings, BackendReport, float], None]


@dataclass
class Target:
    """One backend to check: a label for the table and its validated settings."""

    label: str
    settings: Settings
    error: str | None = None
    """Set when the backend could not even be set up (a local server failed to start)."""
    secrets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.secrets = _secrets_of(self.settings.url)


def _secrets_of(url: str | None) -> list[str]:
    if not url:
        return []
    try:
        password = sqlalchemy.make_url(url).password if "+" in url.split("://")[0] else None
        password = password or urlsplit(url).password
    except Exception:
        return []
    return [str(password)] if password else []


def targets_from_env(environ: Mapping[str, str], names: Sequence[str] = ()) -> list[Target]:
    """The backends configured in ``environ``; ConfigError on any invalid setting."""
    sql = Settings.from_env(environ)
    cache = Settings.from_env(environ, backend="redis")  # validated even when REDIS_URL is unset
    found = [t for t in (Target("database", sql), Target("redis", cache)) if t.settings.url]
    for name in names:
        backends: tuple[tuple[Backend, str], ...] = (("sql", "database"), ("redis", "redis"))
        named = [
            Target(f"{name} ({kind})", Settings.from_env(environ, backend=backend, name=name))
            for backend, kind in backends
        ]
        named = [t for t in named if t.settings.url]
        if not named:
            raise ConfigError(
                f"--name {name}: neither {url_variable('sql', name)} nor "
                f"{url_variable('redis', name)} is set",
                variable=url_variable("sql", name),
            )
        found += named
    return found


@contextlib.contextmanager
def local_targets(environ: Mapping[str, str]) -> Iterator[list[Target]]:
    """Start local PostgreSQL, MariaDB and Redis (poolguard.testing), yield targets, stop them."""
    Settings.from_env(environ)  # the POOLGUARD_* settings still apply, and must be valid
    Settings.from_env(environ, backend="redis")
    from poolguard import testing

    kinds: tuple[tuple[str, Backend, str], ...] = (
        ("postgresql (local)", "sql", "PostgresServer"),
        ("mysql (local)", "sql", "MySQLServer"),
        ("redis (local)", "redis", "RedisServer"),
    )
    with contextlib.ExitStack() as stack:
        targets = []
        for label, backend, class_name in kinds:
            try:
                server = stack.enter_context(getattr(testing, class_name)())
            except Exception as exc:  # not installed, or did not start: report, keep going
                failed = Target(label, Settings.from_env(environ, backend=backend))
                failed.error = f"local server did not start: {type(exc).__name__}: {exc}"
                targets.append(failed)
                continue
            settings = Settings.from_env(environ, backend=backend, url=server.url)
            targets.append(Target(label, settings))
        yield targets


def _probe_for(settings: Settings) -> tuple[str, Probe]:
    if settings.backend == "redis":
        from poolguard.check.redis import probe_redis

        return "redis", probe_redis
    assert settings.url is not None
    if dialect_of(settings.url) == "postgresql":
        from poolguard.check.postgres import probe_postgres

        return "postgresql", probe_postgres
    from poolguard.check.mysql import probe_mysql

    return "mysql", probe_mysql


def _kind_of(settings: Settings) -> str:
    if settings.backend == "redis":
        return "redis"
    return dialect_of(settings.url) if settings.url else "sql"


def hard_bound(settings: Settings, op_timeout: float) -> float:
    """The longest a probe of ``settings`` may take before it is reported as hung."""
    connect = settings.connect_timeout or op_timeout
    if settings.backend == "sql":  # libpq rounds up to whole seconds, min 2
        connect = max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(connect))
    return connect + op_timeout + GRACE


def _run_one(target: Target, report: BackendReport, op_timeout: float) -> None:
    try:
        _kind, probe = _probe_for(target.settings)
        probe(target.settings, report, op_timeout)
    except ImportError as exc:
        report.fail(exc)
        report.error = f"{report.error} (install poolguard[postgres], [mysql] or [redis])"
    except Exception as exc:  # a check reports every failure instead of crashing
        report.fail(exc)


def run_targets(targets: Sequence[Target], op_timeout: float) -> list[BackendReport]:
    """Probe every target concurrently; each report is complete or says why not."""
    reports = [BackendReport.start(t.label, t.settings, _kind_of(t.settings)) for t in targets]
    started = time.monotonic()
    threads: list[threading.Thread | None] = []
    for target, report in zip(targets, reports, strict=True):
        if target.error:
            report.error = target.error
            threads.append(None)
            continue
        worker = threading.Thread(
            target=_run_one, args=(target, report, op_timeout), daemon=True, name="poolguard-check"
        )
        worker.start()
        threads.append(worker)
    for index, (target, thread) in enumerate(zip(targets, threads, strict=True)):
        if thread is None:
            continue
        bound = hard_bound(target.settings, op_timeout)
        thread.join(max(0.0, started + bound - time.monotonic()))
        if thread.is_alive():  # the driver's timeouts did not fire: report, never hang
            hung = BackendReport.start(target.label, target.settings, reports[index].kind)
            hung.error = f"no answer within {bound:g}s (connect timeout + --timeout + grace)"
            reports[index] = hung
    return reports
