"""asyncpg knowledge: error classification, connect arguments, socket and transaction state.

PostgreSQL's own rules (SQLSTATE tables, server-side timeouts, PgBouncer detection, which
statements are idempotent) are ``backends/postgres.py``'s; this module only translates what
asyncpg reports into them. What asyncpg does differently from psycopg, measured on this machine
(``asyncpg`` 0.32, a SIGSTOPped server and a blackholing proxy):

- ``asyncpg.connect(timeout=1)`` gives up after 1.00 s against a frozen server *and* a blackhole
  (the handshake included), and an ``asyncio.wait_for`` around a query is cancelled after
  1.00 s too: unlike psycopg (~11 s waiting for a server-side cancel), asyncpg sends its cancel
  request in the background. Its own ``command_timeout`` behaves the same (TimeoutError at
  1.00 s, connection left open).
- A socket shut down under a pending query (the client backstop) fails it at once with
  ``ConnectionDoesNotExistError`` ("connection was closed in the middle of operation", SQLSTATE
  08003) and ``conn.is_closed()`` becomes true; ``close()`` then returns at once. The one slow
  path is a graceful ``close()`` of a *live* socket into a blackhole (waits for its timeout):
  SQLAlchemy's invalidation uses ``close(timeout=2)``.
- asyncpg reads its socket while the connection is idle (the event loop's reader is always
  registered): a backend killed between two statements is noticed before the next one, which
  fails with ``InterfaceError: connection is closed`` *before sending anything*, and the
  server's FATAL (57P01 or 57P02) is not kept; ``is_closed()`` is true without a round trip.
- Errors with a SQLSTATE arrive as ``asyncpg.PostgresError`` subclasses carrying ``sqlstate``
  (connect-time FATALs too: 28P01, 57P03, 53300...); OS errors (refused, DNS, reset) during
  connect arrive as plain ``OSError``. SQLAlchemy's asyncpg dialect translates the asyncpg
  errors into its emulated DBAPI classes (the original in ``.orig`` and ``__cause__``) and lets
  anything else (``OSError``, ``TimeoutError``) through untranslated.

So poolguard does not use asyncpg's ``command_timeout`` (the user's ``connect_args`` may still
set it): the server's ``statement_timeout`` plus the socket-cutting backstop bound a statement
as they do for psycopg. A connect is bounded by asyncpg's ``timeout`` and ``asyncio.wait_for``;
everything that fails while connecting is reported as :class:`ConnectFailedError` (SQLSTATE
08001, connect phase: retried, breaker-counted) unless the server said why (a SQLSTATE).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg import exceptions as apg_errors

from poolguard.backends import postgres as pg
from poolguard.backends.pgbouncer import PGBOUNCER_SQLSTATE, classify_pgbouncer
from poolguard.core.disposition import Classification, Disposition, Scope
from poolguard.errors import PoolguardError

if TYPE_CHECKING:
    from poolguard.config.settings import Settings

__all__ = [
    "PING_SQL",
    "ConnectFailedError",
    "ConnectTimeoutError",
    "classify",
    "connect_params",
    "driver_error",
    "fileno",
    "is_closed",
    "is_idle",
    "needs_reset",
    "pgbouncer_params",
    "server_version",
    "set_keepalive",
    "sqlstate",
]

#: Simple-query protocol, no statement prepared: one round trip (``Connection.execute``).
PING_SQL = "SELECT 1"


class ConnectFailedError(apg_errors.ClientCannotConnectError):  # type: ignore[misc]
    """A connect that failed before the server said why (refused, reset, lost mid-handshake):
    SQLSTATE 08001, nothing was sent that could have run. Not registered under its own
    SQLSTATE (it has none of its own), so asyncpg's error table is unchanged."""


class ConnectTimeoutError(ConnectFailedError):
    """The connect (TCP, TLS, startup, authentication) did not finish within the deadline."""


_CONNECT_TIMEOUT = Classification(
    Disposition.RETRY, "connect_timeout", disconnect=True, connect_phase=True
)
_CONNECT_FAILED = Classification(
    Disposition.RETRY, "connect_failed", disconnect=True, connect_phase=True
)
#: Found closed before anything was sent. The server's reason (57P01 from
#: pg_terminate_backend or a shutdown) was read while idle and dropped by asyncpg, so assume
#: the worst that fits: every older connection may have met it too (validated, not dropped).
_CLOSED_BEFORE_SEND = Classification(
    Disposition.RETRY, "connection_closed", disconnect=True, scope=Scope.POOL
)
#: asyncpg's protocol state while it reads the rest of an error (ERROR_CONSUME = 2). Found at
#: the start of the next operation, before anything is written, when the server's FATAL
#: (pg_terminate_backend, shutdown) arrived while the connection was idle and the socket's
#: close has not been read yet (measured: 70 such errors in 3 s, 6 tasks, a kill every 50 ms,
#: all before send). Nothing was sent; the connection will never serve again. Read in asyncpg's
#: source (``coreproto.pyx``, the same in 0.30.0 and 0.32): the FATAL, unexpected while idle,
#: puts the protocol in this state, and every operation (simple query 15, prepare 11,
#: bind/execute 12, executemany 13) switches state *before* writing its message, so the one
#: that raises sent nothing: a write is as safe to retry as a read (at COMMIT the transaction
#: was already rolled back by the backend's death; ``decide`` re-runs the whole unit). With
#: SQLAlchemy 2.0 it arrives untranslated unless ``_asyncpg.translate_internal_client_errors``.
_CONSUMING_ERROR = "another operation (2) is in progress"
_CLOSING_BEFORE_SEND = Classification(
    Disposition.RETRY, "connection_closing", disconnect=True, scope=Scope.POOL
)
_LOST = Classification(
    Disposition.RETRY_IF_IDEMPOTENT, "connection_lost", disconnect=True, scope=Scope.CONNECTION
)
FAIL_UNKNOWN = Classification(Disposition.FAIL, "error")


def driver_error(exc: BaseException) -> BaseException:
    """The asyncpg (or OS) error under SQLAlchemy's and poolguard's wrappers."""
    seen = 0
    while not _is_driver(exc) and seen < 6:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc, seen = inner, seen + 1
    return exc


def _is_driver(exc: BaseException) -> bool:
    if isinstance(exc, PoolguardError):
        return False  # poolguard's timeouts are TimeoutErrors too: look under them
    return isinstance(
        exc,
        (
            apg_errors.PostgresError,
            apg_errors.InterfaceError,
            apg_errors.InternalClientError,
            OSError,
            TimeoutError,
        ),
    )


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of ``exc`` (or of the asyncpg error it wraps)."""
    code = getattr(driver_error(exc), "sqlstate", None)
    return code if isinstance(code, str) else None


def classify(exc: BaseException) -> Classification:
    """What an asyncpg error means for retry safety (see DESIGN "Retry safety")."""
    err = driver_error(exc)
    if isinstance(err, ConnectTimeoutError):
        return _CONNECT_TIMEOUT
    if isinstance(err, apg_errors.PostgresError):
        code = err.sqlstate
        found = None
        if code == PGBOUNCER_SQLSTATE:  # all of PgBouncer's own errors: the text decides
            found = classify_pgbouncer(str(err))
        if found is None and isinstance(code, str):
            found = pg._classify_sqlstate(code)
        if found is not None:
            return found
        if isinstance(code, str) and code.startswith("08"):
            return _LOST  # another connection exception: the session is gone
        return Classification(Disposition.FAIL, f"sqlstate_{code}")
    if isinstance(err, apg_errors.InterfaceError):
        # "cannot perform operation: connection is closed": asyncpg checked before sending.
        if "connection is closed" in str(err):
            return _CLOSED_BEFORE_SEND
        return Classification(Disposition.FAIL, "interface_error")  # misuse (busy...)
    if isinstance(err, apg_errors.InternalClientError) and _CONSUMING_ERROR in str(err):
        return _CLOSING_BEFORE_SEND
    if isinstance(err, TimeoutError):
        # asyncpg's own command_timeout (set by the user): the statement was cancelled.
        return Classification(Disposition.FAIL, "statement_timeout")
    if isinstance(err, ConnectionRefusedError):
        return Classification(
            Disposition.RETRY, "connect_refused", disconnect=True, connect_phase=True
        )
    if isinstance(err, OSError):
        return _LOST
    return FAIL_UNKNOWN


# --- connect arguments -------------------------------------------------------------------------


def connect_params(settings: Settings) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments: the server timeouts as ``server_settings`` (the
    startup packet, zero round trips; not through PgBouncer, which rejects them), and the
    PgBouncer-safe statement handling."""
    params: dict[str, Any] = {}
    if pg.uses_pgbouncer(settings):
        params.update(pgbouncer_params())
    else:
        gucs = pg.server_timeouts(settings)
        if gucs:
            params["server_settings"] = {k: str(v) for k, v in gucs.items()}
    return params


def pgbouncer_params() -> dict[str, Any]:
    """PgBouncer transaction pooling: a prepared statement lives on one server connection, and
    the next transaction may run on another. asyncpg's own statement cache off, SQLAlchemy's
    prepared-statement cache off, and every statement SQLAlchemy prepares named uniquely: two
    clients sharing a server connection never collide on ``__asyncpg_stmt_1__``, and a name
    is never reused where it might still exist."""
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unique_name,
    }


def _unique_name() -> str:
    import uuid

    return f"__asyncpg_{uuid.uuid4().hex}__"


def server_version(conn: Any) -> int:
    """PostgreSQL's numeric version (``150004`` style, as libpq reports it)."""
    v = conn.get_server_version()
    return int(v.major) * 10000 + int(v.minor if v.major >= 10 else v.micro)


# --- socket and transaction state -------------------------------------------------------------


def _socket(conn: Any) -> Any:
    transport = getattr(conn, "_transport", None)
    if transport is None or transport.is_closing():
        return None
    return transport.get_extra_info("socket")


def fileno(conn: Any) -> int | None:
    """The socket the backstop shuts down, or None once the connection is closed."""
    if conn.is_closed():
        return None
    sock = _socket(conn)
    return None if sock is None else int(sock.fileno())


def set_keepalive(conn: Any, idle_seconds: float) -> None:
    """TCP keepalives and ``TCP_USER_TIMEOUT`` on the connection's socket (asyncpg takes no
    keepalive arguments; libpq's ``keepalives_*`` do the same for psycopg)."""
    sock = _socket(conn)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix socket: nothing between us and the server to die silently
    idle = max(1, round(idle_seconds))
    interval = max(1, idle // pg.KEEPALIVE_PROBES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", pg.KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", (idle + interval * pg.KEEPALIVE_PROBES) * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def is_closed(conn: Any) -> bool:
    """Closed, or found dead by asyncpg's idle reader (no round trip)."""
    return bool(conn.is_closed())


def is_idle(conn: Any) -> bool | None:
    """True outside a transaction, False inside, None when closed (the server's last
    ReadyForQuery status, as asyncpg keeps it)."""
    if conn.is_closed():
        return None
    return not conn.is_in_transaction()


def needs_reset(conn: Any) -> bool | None:
    """False: idle; True: in a (possibly failed) transaction, roll back; None: closed."""
    if conn.is_closed():
        return None
    return bool(conn.is_in_transaction())


def is_asyncpg_connection(conn: Any) -> bool:
    return isinstance(conn, asyncpg.Connection)
