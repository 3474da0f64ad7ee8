"""MySQL / MariaDB knowledge: tables and small functions, no pooling (PyMySQL and aiomysql).

- :func:`classify`: errno → :class:`Classification` (the retry-safety input);
- :func:`connect_params`: PyMySQL/aiomysql keyword arguments (connect timeout, the read/write
  timeout that backs up the watchdog);
- :func:`session_setup_sql`: server-side timeouts, worded for the flavour the server reports
  (MariaDB ``max_statement_time`` in seconds for any statement, MySQL ``max_execution_time`` in
  milliseconds for SELECT only);
- :func:`set_keepalive`: TCP keepalive timing on a connected socket (PyMySQL and aiomysql only
  switch ``SO_KEEPALIVE`` on, with the kernel's 2-hour default idle time);
- :func:`needs_reset` / :func:`in_transaction`: the server status flags of the last reply, no
  round trip;
- :func:`send_rollback` / :func:`rollback_pending` / :func:`read_rollback_reply`: a ROLLBACK
  sent without reading its reply, read at the next checkout (``SqlBackend.settle``);
- :func:`is_idempotent`: may this statement run twice? (a conservative parse, see ``sql.py``).

Before-send vs after-send, read from PyMySQL 1.1 ``connections.py``: ``_write_bytes`` raises
2006 "MySQL server has gone away" when ``sendall`` fails, so the server never received a whole
request packet and cannot have executed it (before send); ``_read_bytes`` raises 2013 "Lost
connection to MySQL server during query" when the reply cannot be read: the request was sent
and may have run (after send). A write to a peer that has already closed usually *succeeds*
(kernel buffer), so a connection killed while idle also shows up as 2013 on the read. aiomysql
buffers writes and never raises 2006; both raise ``InterfaceError`` "(0, ...)" on a connection
they already know is closed (before send).

Nothing here imports SQLAlchemy: ``integrations/sqlalchemy/_backend.py`` (``MySQLBackend``)
wires it into engines, and ``core/disposition.py`` decides what a Classification allows.
"""

from __future__ import annotations

import functools
import math
import select
import socket
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pymysql import err as my_errors

from poolguard.backends.sql import SqlRules, is_read_statement
from poolguard.core.disposition import Classification, Disposition, Scope

if TYPE_CHECKING:
    from poolguard.config.settings import Settings

__all__ = [
    "AFTER_SEND_ERRNOS",
    "BEFORE_SEND_ERRNOS",
    "CONNECT_ERRNOS",
    "MYSQL_RULES",
    "RETRY_TRANSACTION_ERRNOS",
    "SERVER_STATUS_IN_TRANS",
    "TIMEOUT_ERRNOS",
    "classify",
    "connect_params",
    "driver_error",
    "errno_of",
    "in_transaction",
    "is_idempotent",
    "is_mariadb",
    "needs_reset",
    "read_rollback_reply",
    "read_rollback_reply_async",
    "rollback_deferrable",
    "rollback_pending",
    "rollback_reply_ready",
    "send_rollback",
    "session_setup_sql",
    "set_keepalive",
    "socket_fileno",
]

# --- classification tables ------------------------------------------------------------------

#: The server rolled back (1213: the whole transaction). 1205 (lock wait timeout) rolls back
#: only the *statement* unless ``innodb_rollback_on_timeout``, but the earlier work is still
#: uncommitted: ``run_transaction`` rolls it back and re-runs the unit, which is just as safe
#: (nothing was committed). A lone autocommit statement is simply re-run. Same choice as
#: PostgreSQL's 55P03 (lock_not_available).
RETRY_TRANSACTION_ERRNOS: Mapping[int, str] = {
    1213: "deadlock",
    1205: "lock_wait_timeout",
}

#: Refused while connecting: safe to retry anything, feeds the circuit breaker.
CONNECT_ERRNOS: Mapping[int, tuple[str, Scope]] = {
    2003: ("connect_failed", Scope.NONE),  # CR_CONN_HOST_ERROR (refused, timed out)
    2002: ("connect_failed", Scope.NONE),  # CR_CONNECTION_ERROR (Unix socket)
    2005: ("dns_failed", Scope.NONE),  # CR_UNKNOWN_HOST
    1040: ("too_many_connections", Scope.NONE),  # ER_CON_COUNT_ERROR
    1203: ("too_many_connections", Scope.NONE),  # ER_TOO_MANY_USER_CONNECTIONS
}

#: The statement never ran: retry anywhere, on a new connection. 1290 / 1836 / 1792: the server
#: is read-only, i.e. after a failover we reached a replica (every older connection may point at
#: the demoted primary: the SQLAlchemy integration replaces them, ``MySQLBackend.wrong_role``;
#: ``refused``: not charged to the retry budget). 4031: MySQL >= 8.0.24 tells an idle client it
#: was disconnected for inactivity (``wait_timeout``), before reading its next request.
#:
#: POOL scope for the disconnects too: what kills one idle connection (``wait_timeout``, a
#: restart, a firewall's idle timer, an admin's KILL loop) has usually killed its idle siblings,
#: and without marking them suspect a retry would draw the next dead one from the pool
#: (measured: 3 dead pooled connections exhausted 3 attempts). Suspect means "ping at next
#: checkout", not "drop".
BEFORE_SEND_ERRNOS: Mapping[int, tuple[str, Scope]] = {
    2006: ("server_gone_before_send", Scope.POOL),  # CR_SERVER_GONE_ERROR (sendall failed)
    4031: ("idle_timeout_disconnect", Scope.POOL),  # ER_CLIENT_INTERACTION_TIMEOUT
    1290: ("read_only", Scope.POOL),  # ER_OPTION_PREVENTS_STATEMENT (--read-only)
    1836: ("read_only", Scope.POOL),  # ER_READ_ONLY_MODE
    # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION: also what a demoted server with
    # transaction_read_only=ON by default answers (some failover tools fence that way).
    1792: ("read_only", Scope.POOL),
}

#: The connection died with a request in flight: it may have run (POOL scope: see above).
AFTER_SEND_ERRNOS: Mapping[int, tuple[str, Scope]] = {
    2013: ("lost_connection", Scope.POOL),  # CR_SERVER_LOST
    2055: ("lost_connection", Scope.POOL),  # CR_SERVER_LOST_EXTENDED
    1927: ("connection_killed", Scope.POOL),  # ER_CONNECTION_KILLED (MariaDB KILL)
    1053: ("server_shutdown", Scope.POOL),  # ER_SERVER_SHUTDOWN
}

#: Server-side statement timeouts: final, the connection stays usable.
TIMEOUT_ERRNOS: Mapping[int, str] = {
    1969: "statement_timeout",  # MariaDB ER_STATEMENT_TIMEOUT (max_statement_time)
    3024: "statement_timeout",  # MySQL ER_QUERY_TIMEOUT (max_execution_time)
}

#: Permanent even though they are "OperationalError"s; named for readable reasons.
FAIL_ERRNOS: Mapping[int, str] = {
    1045: "access_denied",
    1044: "db_access_denied",
    1049: "unknown_database",
    # Blocked after max_connect_errors aborted handshakes: needs FLUSH HOSTS, and retrying
    # would only add to the count.
    1129: "host_blocked",
    1317: "query_interrupted",  # KILL QUERY: someone stopped it on purpose
    2014: "commands_out_of_sync",
}

_DISCONNECT_FAILS = frozenset({2014})
FAIL_UNKNOWN = Classification(Disposition.FAIL, "error")


def driver_error(exc: BaseException) -> BaseException:
    """The PyMySQL error under wrappers (SQLAlchemy's ``.orig``, ``raise ... from``)."""
    seen = 0
    while not isinstance(exc, my_errors.MySQLError) and seen < 5:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc, seen = inner, seen + 1
    return exc


def errno_of(exc: BaseException) -> int | None:
    """The MySQL errno of ``exc`` (or of the driver error it wraps)."""
    err = driver_error(exc)
    if not isinstance(err, my_errors.MySQLError) or not err.args:
        return None
    code = err.args[0]
    return code if isinstance(code, int) else None


def classify(exc: BaseException) -> Classification:
    """What a MySQL/MariaDB (PyMySQL/aiomysql) error means for retry safety."""
    err = driver_error(exc)
    if not isinstance(err, my_errors.MySQLError):
        return _classify_foreign(err)
    code = errno_of(err)
    text = str(err).lower()
    if code is None or code == 0:
        return _classify_codeless(err, text)
    if code in RETRY_TRANSACTION_ERRNOS:
        return Classification(Disposition.RETRY_TRANSACTION, RETRY_TRANSACTION_ERRNOS[code])
    if code in CONNECT_ERRNOS:
        reason, scope = CONNECT_ERRNOS[code]
        return Classification(
            Disposition.RETRY,
            _connect_reason(reason, text),
            disconnect=True,
            scope=scope,
            connect_phase=True,
        )
    if code in BEFORE_SEND_ERRNOS:
        reason, scope = BEFORE_SEND_ERRNOS[code]
        refused = reason == "read_only"
        return Classification(
            Disposition.RETRY, reason, disconnect=True, scope=scope, refused=refused
        )
    if code in AFTER_SEND_ERRNOS:
        return _after_send(code, text)
    if code in TIMEOUT_ERRNOS:
        return Classification(Disposition.FAIL, TIMEOUT_ERRNOS[code])
    reason = FAIL_ERRNOS.get(code, f"errno_{code}")
    return Classification(Disposition.FAIL, reason, disconnect=code in _DISCONNECT_FAILS)


def _connect_reason(reason: str, text: str) -> str:
    if reason != "connect_failed":
        return reason
    if "timed out" in text:
        return "connect_timeout"
    if "refused" in text:
        return "connect_refused"
    return reason


def _after_send(code: int, text: str) -> Classification:
    reason, scope = AFTER_SEND_ERRNOS[code]
    if code == 2013 and "timed out" in text:
        # PyMySQL's read_timeout fired: the statement may still be running on the server, and
        # re-running it would double the load. Final, like a server-side statement timeout.
        return Classification(Disposition.FAIL, "read_timeout", disconnect=True, scope=scope)
    return Classification(Disposition.RETRY_IF_IDEMPOTENT, reason, disconnect=True, scope=scope)


def _classify_codeless(err: BaseException, text: str) -> Classification:
    # PyMySQL InterfaceError(0, "") / aiomysql "(0, 'Not connected')" / "Already closed": the
    # driver refused to send on a connection it knows is closed.
    if isinstance(err, (my_errors.InterfaceError, my_errors.OperationalError)) or (
        "closed" in text or "not connected" in text
    ):
        return Classification(
            Disposition.RETRY, "connection_closed", disconnect=True, scope=Scope.CONNECTION
        )
    return FAIL_UNKNOWN


def _classify_foreign(exc: BaseException) -> Classification:
    if isinstance(exc, ConnectionRefusedError):
        return Classification(
            Disposition.RETRY, "connect_refused", disconnect=True, connect_phase=True
        )
    return FAIL_UNKNOWN


# --- statements ------------------------------------------------------------------------------

#: Side-effecting MySQL functions (documentation and tests: ``sql.py`` rejects every function
#: outside its allow-list anyway). ``SLEEP`` is harmless and allowed.
MYSQL_UNSAFE_FUNCTIONS = frozenset(
    {
        "get_lock", "release_lock", "release_all_locks", "is_free_lock", "is_used_lock",
        "nextval", "setval", "lastval", "uuid_short", "load_file", "benchmark",
        "master_pos_wait", "source_pos_wait", "wait_for_executed_gtid_set",
    }
)  # fmt: skip
#: MySQL built-ins without side effects that ORMs and apps emit, beyond the shared list.
MYSQL_SAFE_FUNCTIONS = frozenset(
    {"sleep", "version", "json_contains", "json_length", "json_keys", "json_valid",
     "from_base64", "to_base64", "conv", "bin", "oct", "weekday", "dayofweek", "dayofmonth",
     "year", "month", "day", "hour", "minute", "second", "now", "last_day", "convert"}
)  # fmt: skip
MYSQL_RULES = SqlRules(
    unsafe_functions=MYSQL_UNSAFE_FUNCTIONS,
    safe_functions=SqlRules().safe_functions | MYSQL_SAFE_FUNCTIONS,
    hash_comments=True,
    backtick_identifiers=True,
    dollar_quotes=False,
)


@functools.lru_cache(maxsize=4096)
def is_idempotent(sql: str) -> bool:
    """True when ``sql`` is a plain read that may safely run twice (conservative)."""
    return is_read_statement(sql, MYSQL_RULES)


# --- flavour and server-side timeouts ----------------------------------------------------------

#: Lowest MariaDB with ``idle_transaction_timeout`` (10.3) — all supported versions have it.
MARIADB = "mariadb"


def is_mariadb(server_version: str) -> bool:
    """MariaDB reports e.g. ``10.11.6-MariaDB-0+deb12u1`` (MySQL: ``8.0.36``)."""
    return MARIADB in server_version.lower()


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def server_timeouts(settings: Settings, server_version: str) -> dict[str, float | int]:
    """Session variables for the configured timeouts, in the units the flavour wants."""
    out: dict[str, float | int] = {}
    mariadb = is_mariadb(server_version)
    if settings.query_timeout:
        if mariadb:
            out["max_statement_time"] = round(settings.query_timeout, 3)  # seconds, any statement
        else:
            out["max_execution_time"] = max(1, round(settings.query_timeout * 1000))  # SELECT
    if settings.lock_timeout:
        out["innodb_lock_wait_timeout"] = _whole_seconds(settings.lock_timeout)
    if settings.idle_in_transaction_timeout and mariadb:
        out["idle_transaction_timeout"] = _whole_seconds(settings.idle_in_transaction_timeout)
    return out


def session_setup_sql(settings: Settings, server_version: str) -> str | None:
    """One ``SET SESSION`` run once per new connection, or None when nothing is configured."""
    values = server_timeouts(settings, server_version)
    if not values:
        return None
    return "SET SESSION " + ", ".join(f"{k} = {v}" for k, v in values.items())


# --- connect parameters and sockets ------------------------------------------------------------

#: Keepalive probes after the idle time; interval = idle / KEEPALIVE_PROBES (>= 1 s).
KEEPALIVE_PROBES = 3
#: The socket read/write timeout sits this far behind the watchdog (query_timeout + grace), so
#: the watchdog normally fires first; it still bounds what runs outside it (dialect setup).
READ_TIMEOUT_SLACK = 1.0


def connect_params(settings: Settings, *, is_async: bool, backstop_grace: float) -> dict[str, Any]:
    """Driver keyword arguments. aiomysql has no read/write timeout: the watchdog is its bound."""
    params: dict[str, Any] = {}
    if settings.connect_timeout:
        params["connect_timeout"] = settings.connect_timeout
    if settings.query_timeout and not is_async:
        limit = settings.query_timeout + backstop_grace + READ_TIMEOUT_SLACK
        params.update(read_timeout=limit, write_timeout=limit)
    return params


def set_keepalive(sock: socket.socket, idle_seconds: float) -> None:
    """Keepalive timing plus ``TCP_USER_TIMEOUT`` on a connected TCP socket (Linux names;
    silently skipped where the platform lacks one)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix socket: nothing between us and the server to die silently
    idle = max(1, round(idle_seconds))
    interval = max(1, idle // KEEPALIVE_PROBES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", (idle + interval * KEEPALIVE_PROBES) * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def raw_socket(conn: Any) -> socket.socket | None:
    """The socket of a PyMySQL or aiomysql connection, or None when it is closed."""
    sock = getattr(conn, "_sock", None)  # PyMySQL
    if isinstance(sock, socket.socket):
        return sock
    writer = getattr(conn, "_writer", None)  # aiomysql
    if writer is not None:
        found = writer.transport.get_extra_info("socket")
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


def socket_fileno(conn: Any) -> int | None:
    """The fd the backstop shuts down, or None when the connection is already closed."""
    sock = raw_socket(conn)
    if sock is None:
        return None
    fd = sock.fileno()
    return fd if fd >= 0 else None


# --- transaction state ---------------------------------------------------------------------------

#: Status flags of the OK/EOF packets (PyMySQL ``constants.SERVER_STATUS``).
SERVER_STATUS_IN_TRANS = 1
SERVER_STATUS_AUTOCOMMIT = 2


def is_open(conn: Any) -> bool:
    if hasattr(conn, "_writer"):  # aiomysql
        return conn._writer is not None
    return getattr(conn, "_sock", None) is not None


def _busy(conn: Any) -> bool:
    result = getattr(conn, "_result", None)
    return bool(result is not None and getattr(result, "unbuffered_active", False))


def in_transaction(conn: Any) -> bool | None:
    """From the last reply's status flags: True when the server reports a transaction that
    *wrote* (or an explicit BEGIN), False otherwise, None when the connection is closed or
    mid-stream (the flags are stale).

    False does not mean "no transaction": with autocommit off, MariaDB 10.11 keeps the read
    view of a plain SELECT open without setting ``SERVER_STATUS_IN_TRANS`` (measured: status 0,
    ``@@in_transaction`` 1, and the next SELECT still sees the old snapshot). Callers that
    need "did this transaction run anything" must track it themselves.
    """
    if not is_open(conn) or _busy(conn):
        return None
    status = conn.server_status
    if status is None:
        return None
    return bool(status & SERVER_STATUS_IN_TRANS)


def needs_reset(conn: Any) -> bool | None:
    """Does returning ``conn`` to a pool need a ROLLBACK? None: discard it.

    Only an autocommit connection outside an explicit transaction is known clean without a
    round trip: otherwise a read-only transaction may hold a snapshot the flags do not show
    (see :func:`in_transaction`), and the next user of the connection would read stale data.
    """
    if rollback_pending(conn):
        return False  # our own ROLLBACK is on its way (send_rollback): nothing more to undo
    inside = in_transaction(conn)
    if inside is None or inside:
        return inside
    return not conn.server_status & SERVER_STATUS_AUTOCOMMIT


# --- a ROLLBACK whose reply is read later ---------------------------------------------------
#
# As for PostgreSQL (``postgres.py``): the ROLLBACK that ends a SQLAlchemy Connection is sent,
# and its OK packet is read when the connection is next taken from the pool. The server ends
# the transaction on reading the command, so no pooled connection holds locks or a read view.
# PyMySQL and aiomysql keep no request state beyond ``_result`` and ``_next_seq_id``: sending
# as their ``_execute_command`` does and reading with their ``_read_ok_packet`` leaves the
# connection exactly as ``rollback()`` does (``_result`` None, ``server_status`` from the OK
# packet, ``_next_seq_id`` 2). Until the reply is read, any other command would read the OK
# packet as its own reply: only the pool's checkout may take the connection back.

#: Set on a driver connection whose ROLLBACK was sent and whose reply is not read yet.
_ROLLBACK_SENT = "_poolguard_rollback_sent"
_COM_QUERY = 3
#: COM_QUERY "ROLLBACK" as one packet (length 9, sequence 0): what ``_execute_command`` writes.
_ROLLBACK_PACKET = struct.pack("<iB", 9, _COM_QUERY) + b"ROLLBACK"
_HEADER = 4


def rollback_deferrable(conn: Any) -> bool:
    """May :func:`send_rollback` end this connection's transaction? Only when ``rollback()``
    would send the ROLLBACK at once: the connection is open and no result is left to drain
    (an unbuffered result or more result sets: ``_execute_command`` reads them first)."""
    if not is_open(conn):
        return False
    result = getattr(conn, "_result", None)
    return result is None or not (result.unbuffered_active or result.has_next)


def send_rollback(conn: Any) -> None:
    """Send ROLLBACK without reading its reply (:func:`read_rollback_reply` reads it). Call
    only when :func:`rollback_deferrable` said so; raises the driver's error when the
    connection is closed or the send fails, like ``rollback()``."""
    if hasattr(conn, "_writer"):
        # aiomysql: _execute_command is a coroutine, but with no result to drain it only
        # writes (buffered by the transport, never blocks); the same steps, without awaiting.
        conn._ensure_alive()
        conn._result = None
        conn._write_bytes(_ROLLBACK_PACKET)
        conn._next_seq_id = 1
    else:
        conn._execute_command(_COM_QUERY, "ROLLBACK")  # PyMySQL: sendall, no read
    setattr(conn, _ROLLBACK_SENT, True)


def rollback_pending(conn: Any) -> bool:
    """Was a ROLLBACK sent on ``conn`` whose reply is not read yet?"""
    # ``is True``: a stand-in connection (SQLAlchemy's own tests use a Mock) answers any
    # attribute with something truthy, and would be "settled" (and discarded) at each checkout.
    return getattr(conn, _ROLLBACK_SENT, False) is True


def rollback_reply_ready(conn: Any) -> bool:
    """Will reading the reply not wait? True also when the connection is closed or at EOF
    (the read then fails at once)."""
    reader = getattr(conn, "_reader", None)
    if reader is not None:  # aiomysql: what the event loop already put in the StreamReader
        buffered = reader._buffer
        if len(buffered) >= _HEADER:
            return len(buffered) >= _HEADER + int.from_bytes(buffered[:3], "little")
        return bool(reader.at_eof() or reader.exception() is not None)
    sock = raw_socket(conn)
    if sock is None or sock.fileno() < 0:
        return True
    # PyMySQL: its buffered reader holds nothing (every earlier reply was read whole), so the
    # socket says whether the OK packet (15 bytes, one segment) is here.
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _reading(conn: Any) -> None:
    setattr(conn, _ROLLBACK_SENT, False)
    if not is_open(conn):
        raise my_errors.InterfaceError(0, "connection closed with its ROLLBACK reply unread")


def read_rollback_reply(conn: Any) -> None:
    """Read the OK packet of :func:`send_rollback` (PyMySQL). Raises the driver's error
    (lost connection, an error packet, 2014 for anything but OK): discard the connection."""
    _reading(conn)
    conn._read_ok_packet()


async def read_rollback_reply_async(conn: Any) -> None:
    """:func:`read_rollback_reply` for aiomysql (a cancelled read closes the connection)."""
    _reading(conn)
    await conn._read_ok_packet()
