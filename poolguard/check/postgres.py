"""Probe a PostgreSQL server with psycopg: version, latency, timeouts, PgBouncer, TLS.

PgBouncer detection (no admin access needed), strongest signal first:

1. ``conn.info.backend_pid`` (the BackendKeyData sent at login) differs from
   ``pg_backend_pid()``: PgBouncer hands clients a made-up cancel key, so the two only agree
   when the client talks to the backend directly (verified against PgBouncer 1.x in session and
   transaction mode);
2. ``inet_server_port()`` differs from the port we connected to: something forwards the port;
3. the port is 6432, PgBouncer's default (a hint only).
Transaction vs session pooling cannot be told apart from the client side, hence the warning
wording. Timeouts are tried with ``SET LOCAL`` inside a transaction, which works behind
PgBouncer too.

:func:`probe_postgres` fills a ``report.BackendReport``; ``runner.py`` calls it under a time
bound. What real pools do with these timeouts is ``poolguard/backends/postgres.py``.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from typing import Any

import psycopg
import sqlalchemy
from psycopg import sql

from poolguard.check.report import BackendReport, measure_latency, warn_server_idle_kill, warn_tls
from poolguard.config import Settings

__all__ = ["probe_postgres"]

PGBOUNCER_PORT = 6432
# libpq's connect_timeout is whole seconds with a 2 s minimum (see DESIGN "Known traps").
LIBPQ_MIN_CONNECT_TIMEOUT = 2
# PostgreSQL grew transaction_timeout in 17.
PG_TRANSACTION_TIMEOUT_VERSION = 170000
# Each is also backed by a client-side deadline in the integrations.
SERVER_TIMEOUTS = (
    ("query_timeout", "statement_timeout"),
    ("transaction_timeout", "transaction_timeout"),
    ("lock_timeout", "lock_timeout"),
    ("idle_in_transaction_timeout", "idle_in_transaction_session_timeout"),
)


def conninfo(settings: Settings) -> str:
    """The libpq URI of ``settings`` (SQLAlchemy URL without the ``+psycopg`` driver)."""
    url = sqlalchemy.make_url(settings.sql_url()).set(drivername="postgresql")
    rendered = url.render_as_string(hide_password=False)
    # SQLAlchemy writes the query form-encoded (a space as "+", a "+" as "%2B"); libpq decodes
    # only %XX, so `options=-c%20idle_session_timeout%3D5min` reached the server as
    # "-c+idle_session_timeout=5min" and the connect failed. ("?" in a password is %3F.)
    base, sep, query = rendered.partition("?")
    return base + sep + query.replace("+", "%20")


def _watchdog(conn: psycopg.Connection[Any], seconds: float) -> threading.Timer:
    # psycopg sync has no read timeout: shutting the socket down makes a hung call fail
    # (DESIGN "Known traps"), so a frozen server cannot hang the check.
    def fire() -> None:
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except OSError:
            pass

    timer = threading.Timer(max(seconds, 0.0), fire)
    timer.daemon = True
    timer.start()
    return timer


def probe_postgres(settings: Settings, report: BackendReport, op_timeout: float) -> None:
    """Fill ``report`` by connecting to ``settings.url``; raises the driver's error on failure."""
    connect_timeout = settings.connect_timeout or op_timeout
    libpq_timeout = max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(connect_timeout))
    report.timeout(
        "connect_timeout", settings.connect_timeout, f"libpq connect_timeout={libpq_timeout}s"
    )
    with psycopg.connect(
        conninfo(settings), connect_timeout=libpq_timeout, autocommit=True
    ) as conn:
        timer = _watchdog(conn, op_timeout)
        try:
            _inspect(conn, settings, report)
        finally:
            timer.cancel()
    report.ok = True


def _inspect(conn: psycopg.Connection[Any], settings: Settings, report: BackendReport) -> None:
    info = conn.info
    version = info.server_version
    report.server = f"PostgreSQL {version // 10000}.{version % 10000}"
    measure_latency(report, lambda: conn.execute("SELECT 1").fetchone())
    report.tls = bool(info.pgconn.ssl_in_use)
    warn_tls(report, info.host)
    _check_timeouts(conn, settings, report, version)
    _detect_pgbouncer(conn, settings, report)
    row = conn.execute(
        "SELECT coalesce(current_setting('idle_session_timeout', true), '0')"
    ).fetchone()
    idle_ms = _setting_ms(row[0] if row else "0")
    report.facts["idle_session_timeout_s"] = idle_ms / 1000.0
    warn_server_idle_kill(report, settings, "idle_session_timeout", idle_ms / 1000.0)


def _setting_ms(value: str) -> float:
    # current_setting() renders durations with units ("5min", "30s", "0"); pg_settings has ms,
    # but a unit table is simpler than a second query.
    units = {"ms": 1.0, "s": 1000.0, "min": 60000.0, "h": 3600000.0, "d": 86400000.0}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit) and value[: -len(unit)].isdigit():
            return float(value[: -len(unit)]) * units[unit]
    return float(value) if value.isdigit() else 0.0


def _try_set_local(conn: psycopg.Connection[Any], guc: str, seconds: float) -> str | None:
    """``None`` when the server accepts ``SET LOCAL guc``, else its error message."""
    statement = sql.SQL("SET LOCAL {} = {}").format(
        sql.Identifier(guc), sql.Literal(f"{round(seconds * 1000)}ms")
    )
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def _check_timeouts(
    conn: psycopg.Connection[Any], settings: Settings, report: BackendReport, version: int
) -> None:
    for field, guc in SERVER_TIMEOUTS:
        if field == "transaction_timeout" and version < PG_TRANSACTION_TIMEOUT_VERSION:
            report.timeout(field, settings.transaction_timeout, "client deadline (PG < 17)")
            continue
        seconds = getattr(settings, field)
        if seconds is None:
            report.timeout(field, None, f"{guc} not set")
            continue
        check = report.timeout(field, seconds, f"SET LOCAL {guc}")
        error = _try_set_local(conn, guc, seconds)
        check.accepted = error is None
        check.detail = error
        if error:
            report.warnings.append(f"the server refused {guc}: {error}")
    report.timeout("tcp_keepalive", settings.tcp_keepalive, "libpq keepalives_idle (client)")


def _detect_pgbouncer(
    conn: psycopg.Connection[Any], settings: Settings, report: BackendReport
) -> None:
    row = conn.execute("SELECT pg_backend_pid(), inet_server_port()").fetchone()
    real_pid, server_port = (row[0], row[1]) if row else (None, None)
    signals = []
    if real_pid is not None and conn.info.backend_pid != real_pid:
        signals.append("login backend pid differs from pg_backend_pid()")
    port = conn.info.port
    if server_port is not None and port and int(port) != server_port:
        signals.append(f"connected to port {port} but the server listens on {server_port}")
    if port and int(port) == PGBOUNCER_PORT:
        signals.append(f"port {PGBOUNCER_PORT} (PgBouncer's default)")
    detected = bool(signals) and signals != [f"port {PGBOUNCER_PORT} (PgBouncer's default)"]
    report.facts["pgbouncer"] = {"detected": detected, "signals": signals}
    report.facts["pgbouncer_setting"] = settings.pgbouncer
    if detected and settings.pgbouncer == "off":
        report.warnings.append(
            "a pooler (PgBouncer?) sits between you and PostgreSQL ("
            + "; ".join(signals)
            + ") but POOLGUARD_PGBOUNCER=off: with transaction pooling, session SET leaks "
            "between clients; set POOLGUARD_PGBOUNCER=on (or auto)"
        )
    elif detected:
        report.warnings.append(
            "PgBouncer (or another pooler) detected (" + "; ".join(signals) + "): timeouts "
            f"must be SET LOCAL per transaction (POOLGUARD_PGBOUNCER={settings.pgbouncer})"
        )
    elif signals:
        report.warnings.append(f"possible PgBouncer: {signals[0]}")
