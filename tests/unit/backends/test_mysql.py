"""backends/mysql.py: errno classification, statement rules, timeouts, status flags (no server)."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from pymysql import err

from poolguard.backends import mysql
from poolguard.config.settings import Settings
from poolguard.core.disposition import Action, Disposition, Operation, Position, Scope, decide
from poolguard.integrations.sqlalchemy._backend import MySQLBackend, PostgresBackend, backend_for


def _op(code: int, message: str = "x", cls: type[Exception] = err.OperationalError) -> Exception:
    return cls(code, message)


@pytest.mark.parametrize(
    ("code", "message", "disposition", "reason"),
    [
        (1213, "Deadlock found", Disposition.RETRY_TRANSACTION, "deadlock"),
        (1205, "Lock wait timeout exceeded", Disposition.RETRY_TRANSACTION, "lock_wait_timeout"),
        (2003, "Can't connect (timed out)", Disposition.RETRY, "connect_timeout"),
        (2003, "Can't connect ([Errno 111] Connection refused)", Disposition.RETRY,
         "connect_refused"),
        (2002, "Can't connect via socket", Disposition.RETRY, "connect_failed"),
        (1040, "Too many connections", Disposition.RETRY, "too_many_connections"),
        (2006, "MySQL server has gone away", Disposition.RETRY, "server_gone_before_send"),
        (4031, "disconnected by the server", Disposition.RETRY, "idle_timeout_disconnect"),
        (1290, "--read-only option", Disposition.RETRY, "read_only"),
        (1836, "Running in read-only mode", Disposition.RETRY, "read_only"),
        (2013, "Lost connection to MySQL server during query",
         Disposition.RETRY_IF_IDEMPOTENT, "lost_connection"),
        (1927, "Connection was killed", Disposition.RETRY_IF_IDEMPOTENT, "connection_killed"),
        (1053, "Server shutdown in progress", Disposition.RETRY_IF_IDEMPOTENT,
         "server_shutdown"),
        (2013, "Lost connection to MySQL server during query (timed out)",
         Disposition.FAIL, "read_timeout"),
        (1969, "max_statement_time exceeded", Disposition.FAIL, "statement_timeout"),
        (3024, "maximum statement execution time exceeded", Disposition.FAIL,
         "statement_timeout"),
        (1317, "Query execution was interrupted", Disposition.FAIL, "query_interrupted"),
        (1045, "Access denied", Disposition.FAIL, "access_denied"),
        (1044, "Access denied to database", Disposition.FAIL, "db_access_denied"),
        (1129, "Host is blocked", Disposition.FAIL, "host_blocked"),
        (1064, "syntax error", Disposition.FAIL, "errno_1064"),
        (1062, "Duplicate entry", Disposition.FAIL, "errno_1062"),
        (1146, "Table doesn't exist", Disposition.FAIL, "errno_1146"),
    ],
)  # fmt: skip
def test_errno_table(code: int, message: str, disposition: Disposition, reason: str) -> None:
    c = mysql.classify(_op(code, message))
    assert (c.disposition, c.reason) == (disposition, reason)


def test_connect_errors_feed_the_breaker_and_disconnects_mark_the_pool() -> None:
    assert mysql.classify(_op(2003)).connect_phase
    assert not mysql.classify(_op(2006)).connect_phase
    lost = mysql.classify(_op(2013, "Lost connection"))
    assert lost.disconnect
    assert lost.scope is Scope.POOL
    assert not mysql.classify(_op(1062)).disconnect
    assert mysql.classify(_op(2014, "Command Out of Sync")).disconnect


def test_codeless_closed_connection_is_before_send() -> None:
    for exc in (err.InterfaceError(0, ""), err.InterfaceError("(0, 'Not connected')")):
        c = mysql.classify(exc)
        assert (c.disposition, c.reason, c.disconnect) == (
            Disposition.RETRY,
            "connection_closed",
            True,
        )


def test_wrapped_errors_are_unwrapped() -> None:
    orig = _op(1213, "Deadlock")
    wrapped = sa_exc.OperationalError("UPDATE t", {}, orig)
    assert mysql.errno_of(wrapped) == 1213
    assert mysql.classify(wrapped).reason == "deadlock"
    assert mysql.classify(ValueError("no")).disposition is Disposition.FAIL
    assert mysql.classify(ConnectionRefusedError()).reason == "connect_refused"


def test_the_rule_on_mysql_errors() -> None:
    gone, lost = mysql.classify(_op(2006)), mysql.classify(_op(2013, "Lost"))
    write = Operation(Position.AUTOCOMMIT, idempotent=False)
    assert decide(gone, write) is Action.RETRY  # nothing was sent: even a write moves
    assert decide(lost, write) is Action.AMBIGUOUS
    assert decide(lost, Operation(Position.COMMIT)) is Action.AMBIGUOUS
    assert decide(gone, Operation(Position.COMMIT)) is Action.FAIL  # COMMIT never sent
    assert decide(lost, Operation(Position.FIRST, idempotent=True)) is Action.RETRY
    assert decide(lost, Operation(Position.LATER, idempotent=True)) is Action.FAIL


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE id = 1", True),
        ("select sleep(1)", True),
        ("SHOW VARIABLES LIKE 'x'", True),
        ("SELECT `from` FROM `t` # comment with INSERT", True),
        ("SELECT 'it''s', \"q\" FROM t", True),
        ("SELECT * FROM t LOCK IN SHARE MODE", False),
        ("SELECT * FROM t FOR UPDATE", False),
        ("SELECT * FROM t FOR SHARE", False),
        ("SELECT GET_LOCK('x', 1)", False),
        ("SELECT RELEASE_LOCK('x')", False),
        ("SELECT NEXTVAL(s)", False),
        ("SELECT a INTO @v FROM t", False),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x'", False),
        ("INSERT INTO t VALUES (1)", False),
        ("DO SLEEP(1)", False),
        ("CALL proc()", False),
        ("SELECT 1; DELETE FROM t", False),
        ("SELECT my_udf(1)", False),
        ("SELECT 1 /* unterminated", False),
    ],
)
def test_is_idempotent(sql: str, expected: bool) -> None:
    assert mysql.is_idempotent(sql) is expected


def test_session_setup_follows_the_flavour() -> None:
    s = Settings(query_timeout=1.5, lock_timeout=0.2, idle_in_transaction_timeout=10.5)
    maria = mysql.session_setup_sql(s, "10.11.6-MariaDB-0+deb12u1")
    assert maria == (
        "SET SESSION max_statement_time = 1.5, innodb_lock_wait_timeout = 1,"
        " idle_transaction_timeout = 11"
    )
    oracle = mysql.session_setup_sql(s, "8.0.36")
    assert oracle == "SET SESSION max_execution_time = 1500, innodb_lock_wait_timeout = 1"
    assert mysql.session_setup_sql(Settings(), "8.0.36") is None


def test_connect_params() -> None:
    s = Settings(connect_timeout=0.25, query_timeout=2.0)
    sync = mysql.connect_params(s, is_async=False, backstop_grace=0.5)
    assert sync == {"connect_timeout": 0.25, "read_timeout": 3.5, "write_timeout": 3.5}
    # aiomysql has no read/write timeouts: the watchdog is its bound
    assert mysql.connect_params(s, is_async=True, backstop_grace=0.5) == {"connect_timeout": 0.25}
    assert (
        mysql.connect_params(Settings(connect_timeout=None), is_async=False, backstop_grace=0.5)
        == {}
    )


def _pymysql(status: int | None, *, open_: bool = True, streaming: bool = False) -> Any:
    result = SimpleNamespace(unbuffered_active=streaming)
    return SimpleNamespace(_sock=object() if open_ else None, server_status=status, _result=result)


def test_status_flags() -> None:
    in_trans, autocommit = mysql.SERVER_STATUS_IN_TRANS, mysql.SERVER_STATUS_AUTOCOMMIT
    assert mysql.in_transaction(_pymysql(in_trans)) is True
    assert mysql.in_transaction(_pymysql(0)) is False
    assert mysql.in_transaction(_pymysql(0, open_=False)) is None
    assert mysql.in_transaction(_pymysql(0, streaming=True)) is None
    # autocommit off: a read-only snapshot may be open without IN_TRANS, so roll back
    assert mysql.needs_reset(_pymysql(0)) is True
    assert mysql.needs_reset(_pymysql(autocommit)) is False
    assert mysql.needs_reset(_pymysql(autocommit | in_trans)) is True
    assert mysql.needs_reset(_pymysql(0, open_=False)) is None
    aio = SimpleNamespace(_writer=None, server_status=0, _result=None)
    assert mysql.in_transaction(aio) is None


def test_keepalive_options_on_a_tcp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        mysql.set_keepalive(sock, 30)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        mysql.set_keepalive(unix, 30)  # nothing to do, no error


def test_socket_fileno() -> None:
    with socket.socket() as sock:
        assert mysql.socket_fileno(SimpleNamespace(_sock=sock)) == sock.fileno()
    assert mysql.socket_fileno(SimpleNamespace(_sock=None)) is None


def test_adapter_by_dialect() -> None:
    my = backend_for("mysql", backstop_grace=0.5)
    assert isinstance(my, MySQLBackend)
    assert my.retry_codes == frozenset({"1213", "1205"})
    assert my.error_code(_op(1213)) == "1213"
    assert not my.exact_transaction_status
    with pytest.raises(Exception, match="PostgreSQL"):
        my.check_resolve()
    pg = backend_for("postgresql", backstop_grace=0.5)
    assert isinstance(pg, PostgresBackend)
    assert pg.exact_transaction_status
    pg.check_resolve()
