"""Your own servers in the demo: ``--pg-url``, ``--mysql-url``, ``--redis-url``.

The demo cannot stop or SIGSTOP a server it did not start, so scenarios that need the server's
process (``pg-restart``, ``pg-freeze``) are refused with their names; the others inject their
fault through SQL (``pg_terminate_backend``, ``SET GLOBAL wait_timeout``), a FaultProxy in front of
the server, or ``DEBUG SLEEP`` — each probed first, so a server that refuses says so up front.
A server not given is started embedded, as usual. URLs are never printed unredacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import redis
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from poolguard.demo.workload import driver_url

__all__ = ["OwnServer", "kill_own_backends", "refusal"]

DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306, "redis": 6379}


class OwnServer:
    """A server the user runs: its URL (also the admin URL), host and port; no process control."""

    def __init__(self, kind: str, url: str) -> None:
        parts = urlsplit(url)
        self.kind = kind
        self.url = url
        self.admin_url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or DEFAULT_PORTS[kind]

    def _no_process(self, *args: object, **kwargs: object) -> NoReturn:
        # Unreachable through the CLI: refusal() turns such scenarios away first.
        raise RuntimeError(f"the demo cannot control your {self.kind} server's process")

    def restart(self, downtime: float = 0.0) -> None:
        self._no_process()

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        self._no_process()

    def kill_connections(self) -> int:
        return kill_own_backends(self.url)

    def __repr__(self) -> str:
        return f"<OwnServer {self.kind} {self.host}:{self.port}>"


#: The demo's own sessions only: same database and login, never the killer's own session.
_KILL_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()
"""


def kill_own_backends(url: str) -> int:
    engine = sqlalchemy.create_engine(driver_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return int(conn.execute(text(_KILL_SQL)).scalar_one())
    finally:
        engine.dispose()


@contextlib.contextmanager
def _probe_sql(url: str) -> Iterator[sqlalchemy.Connection]:
    engine = sqlalchemy.create_engine(driver_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def refusal(name: str, needs_process: bool, own: dict[str, str]) -> str | None:
    """Why scenario ``name`` cannot run on the user's servers ``own`` (kind -> URL), or None."""
    if needs_process and "postgres" in own:
        return f"{name}: needs to stop/SIGSTOP the PostgreSQL process; not on your own server"
    try:
        if name == "redis-stall" and "redis" in own:
            with redis.Redis.from_url(own["redis"], socket_timeout=5) as client:
                client.execute_command("DEBUG", "SLEEP", 0)
        if name == "mysql-idle" and "mysql" in own:
            with _probe_sql(own["mysql"]) as conn:
                conn.execute(text("SET GLOBAL wait_timeout = @@GLOBAL.wait_timeout"))
        if name == "pg-kills" and "postgres" in own:
            with _probe_sql(own["postgres"]) as conn:
                conn.execute(text("SELECT pg_terminate_backend(NULL)"))
    except Exception as exc:  # the server said no: report which scenario and why, no URL
        return f"{name}: your server refused the fault ({type(exc).__name__})"
    return None
