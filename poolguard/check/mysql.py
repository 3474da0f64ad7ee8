"""Probe a MySQL/MariaDB server with PyMySQL: version, latency, timeouts, wait_timeout, TLS.

MariaDB takes ``max_statement_time`` in seconds for any statement and has
``idle_transaction_timeout``; MySQL takes ``max_execution_time`` in milliseconds and only for
SELECT (DESIGN "Known traps"), so the probe asks the server which one it is before trying.

:func:`probe_mysql` fills a ``report.BackendReport``; ``runner.py`` calls it under a time bound.
The same flavour rule, for real pools, is ``poolguard/backends/mysql.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pymysql
import sqlalchemy

from poolguard.check.report import BackendReport, measure_latency, warn_server_idle_kill, warn_tls
from poolguard.config import Settings

__all__ = ["probe_mysql"]

# URL query parameters handed to PyMySQL as they are (what SQLAlchemy's dialect also passes).
PASSTHROUGH = ("unix_socket", "charset", "ssl_ca", "ssl_cert", "ssl_key")


def connect_args(settings: Settings, op_timeout: float) -> dict[str, Any]:
    """PyMySQL keyword arguments for ``settings.url``."""
    url = sqlalchemy.make_url(settings.sql_url())
    args: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "user": url.username,
        "password": url.password or "",
        "database": url.database,
        "connect_timeout": settings.connect_timeout or op_timeout,
        "read_timeout": op_timeout,
        "write_timeout": op_timeout,
    }
    for key in PASSTHROUGH:
        value = url.query.get(key)
        if isinstance(value, str):
            args[key] = value
    return args


def probe_mysql(settings: Settings, report: BackendReport, op_timeout: float) -> None:
    """Fill ``report`` by connecting to ``settings.url``; raises the driver's error on failure."""
    args = connect_args(settings, op_timeout)
    report.timeout("connect_timeout", settings.connect_timeout, "PyMySQL connect_timeout")
    conn = pymysql.connect(**args)
    try:
        _inspect(conn, settings, report, args.get("unix_socket") or args["host"])
    finally:
        conn.close()
    report.ok = True


def _scalar(conn: Any, query: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    return row[-1] if row else None


def _inspect(conn: Any, settings: Settings, report: BackendReport, host: str) -> None:
    version = str(_scalar(conn, "SELECT VERSION()"))
    mariadb = "mariadb" in version.lower()
    report.server = f"{'MariaDB' if mariadb else 'MySQL'} {version}"
    report.facts["mariadb"] = mariadb
    measure_latency(report, lambda: _scalar(conn, "SELECT 1"))
    report.tls = bool(_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'"))
    warn_tls(report, host)
    _check_timeouts(conn, settings, report, mariadb)
    wait_timeout = float(_scalar(conn, "SELECT @@SESSION.wait_timeout") or 0)
    report.facts["wait_timeout_s"] = wait_timeout
    warn_server_idle_kill(report, settings, "wait_timeout", wait_timeout)


def _try_set(conn: Any, statement: str) -> str | None:
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    except pymysql.MySQLError as exc:
        return str(exc)
    return None


def _server_guard(
    conn: Any, report: BackendReport, field: str, seconds: float | None, how: tuple[str, str]
) -> None:
    variable, value = how
    if seconds is None:
        report.timeout(field, None, f"{variable} not set")
        return
    check = report.timeout(field, seconds, f"SET SESSION {variable}={value}")
    error = _try_set(conn, f"SET SESSION {variable} = {value}")
    check.accepted = error is None
    check.detail = error
    if error:
        report.warnings.append(f"the server refused {variable}: {error}")


def _check_timeouts(conn: Any, settings: Settings, report: BackendReport, mariadb: bool) -> None:
    query = settings.query_timeout
    if mariadb:
        how = ("max_statement_time", f"{query:g}" if query else "0")
    else:  # MySQL: milliseconds, and it only ever applies to SELECT
        how = ("max_execution_time", str(round(query * 1000)) if query else "0")
    _server_guard(conn, report, "query_timeout", query, how)
    lock = settings.lock_timeout
    # InnoDB lock waits are whole seconds, at least 1.
    lock_value = str(max(1, math.ceil(lock))) if lock else "0"
    _server_guard(conn, report, "lock_timeout", lock, ("innodb_lock_wait_timeout", lock_value))
    report.timeout("transaction_timeout", settings.transaction_timeout, "client deadline")
    idle = settings.idle_in_transaction_timeout
    if mariadb:
        idle_value = str(max(1, math.ceil(idle))) if idle else "0"
        _server_guard(
            conn,
            report,
            "idle_in_transaction_timeout",
            idle,
            ("idle_transaction_timeout", idle_value),
        )
    else:
        report.timeout("idle_in_transaction_timeout", idle, "client deadline (MySQL has none)")
    report.timeout("tcp_keepalive", settings.tcp_keepalive, "socket keepalive (client)")
