"""PostgreSQL backend knowledge: classification table, statement shapes, connect parameters."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from poolguard.backends import postgres as pg
from poolguard.config.settings import Settings
from poolguard.core.disposition import Action, Disposition, Operation, Position, Scope, decide


def _err(cls: type[psycopg.Error], message: str = "boom") -> psycopg.Error:
    return cls(message)


@pytest.mark.parametrize(
    ("error", "disposition", "reason"),
    [
        (pg_errors.SerializationFailure, Disposition.RETRY_TRANSACTION, "serialization_failure"),
        (pg_errors.DeadlockDetected, Disposition.RETRY_TRANSACTION, "deadlock_detected"),
        (pg_errors.LockNotAvailable, Disposition.RETRY_TRANSACTION, "lock_not_available"),
        (pg_errors.CannotConnectNow, Disposition.RETRY, "cannot_connect_now"),
        (pg_errors.TooManyConnections, Disposition.RETRY, "too_many_connections"),
        (pg_errors.AdminShutdown, Disposition.RETRY_IF_IDEMPOTENT, "admin_shutdown"),
        (pg_errors.CrashShutdown, Disposition.RETRY_IF_IDEMPOTENT, "crash_shutdown"),
        (
            pg_errors.IdleInTransactionSessionTimeout,
            Disposition.RETRY_IF_IDEMPOTENT,
            "idle_in_transaction_timeout",
        ),
        (pg_errors.ReadOnlySqlTransaction, Disposition.RETRY, "read_only_transaction"),
        (pg_errors.QueryCanceled, Disposition.FAIL, "statement_timeout"),
        (pg_errors.UniqueViolation, Disposition.FAIL, "sqlstate_23505"),
        (pg_errors.SyntaxError, Disposition.FAIL, "sqlstate_42601"),
        (pg_errors.InvalidPassword, Disposition.FAIL, "sqlstate_28P01"),
    ],
)
def test_sqlstate_table(error: type[psycopg.Error], disposition: Disposition, reason: str) -> None:
    c = pg.classify(_err(error))
    assert (c.disposition, c.reason) == (disposition, reason)


def test_disconnect_scopes() -> None:
    assert pg.classify(_err(pg_errors.AdminShutdown)).scope is Scope.POOL
    assert pg.classify(_err(pg_errors.CannotConnectNow)).connect_phase
    assert pg.classify(_err(pg_errors.ReadOnlySqlTransaction)).disconnect
    assert not pg.classify(_err(pg_errors.SerializationFailure)).disconnect


@pytest.mark.parametrize(
    ("message", "disposition", "connect_phase"),
    [
        ("sending query failed: another command is already in progress", Disposition.RETRY, False),
        ("connection failed: Connection refused", Disposition.RETRY, True),
        ("consuming input failed: server closed the connection unexpectedly",
         Disposition.RETRY_IF_IDEMPOTENT, False),
        ("SSL SYSCALL error: EOF detected", Disposition.RETRY_IF_IDEMPOTENT, False),
        ("something odd", Disposition.RETRY_IF_IDEMPOTENT, False),
    ],
)  # fmt: skip
def test_libpq_messages(message: str, disposition: Disposition, connect_phase: bool) -> None:
    c = pg.classify(psycopg.OperationalError(message))
    assert c.disposition is disposition
    assert c.connect_phase is connect_phase
    assert c.disconnect


def test_connection_timeout_is_connect_phase() -> None:
    c = pg.classify(pg_errors.ConnectionTimeout("connection timeout expired"))
    assert c.disposition is Disposition.RETRY
    assert c.connect_phase


def test_wrapped_errors_are_unwrapped() -> None:
    class Wrapper(Exception):
        def __init__(self, orig: BaseException) -> None:
            self.orig = orig

    assert pg.classify(Wrapper(_err(pg_errors.DeadlockDetected))).reason == "deadlock_detected"
    outer = RuntimeError("outer")
    outer.__cause__ = _err(pg_errors.AdminShutdown)
    assert pg.sqlstate(outer) == "57P01"


def test_unknown_errors_fail() -> None:
    assert pg.classify(ValueError("x")).disposition is Disposition.FAIL
    assert pg.classify(pg_errors.ProgrammingError("bad")).disposition is Disposition.FAIL


def test_lost_commit_is_ambiguous_but_lost_send_is_not() -> None:
    lost_reply = pg.classify(psycopg.OperationalError("consuming input failed: EOF"))
    not_sent = pg.classify(psycopg.OperationalError("sending query failed: EPIPE"))
    commit = Operation(Position.COMMIT, unit_of_work=True)
    assert decide(lost_reply, commit) is Action.AMBIGUOUS
    assert decide(not_sent, commit) is Action.RETRY_TRANSACTION


READS = [
    "SELECT 1",
    "select * from accounts where id = %(id_1)s",
    "  /* c */ (SELECT a FROM t) UNION (SELECT b FROM u)",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SHOW statement_timeout",
    "VALUES (1), (2)",
    "TABLE accounts",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "SELECT count(*) AS count_1 FROM (SELECT t.id FROM t) AS anon_1",
    "SELECT 'delete from t' AS s",
    "SELECT $$ insert $$, $q$ update $q$",
    'SELECT "insert" FROM t',
    "SELECT 1 -- FOR UPDATE",
    "SELECT substring(a FROM 1 FOR 2) FROM t",
    "SELECT coalesce(max(id), 0) FROM t WHERE a IN (%(a_1)s, %(a_2)s)",
    "SELECT pg_xact_status(%(x)s::xid8)",
    "SELECT 1;",
]
WRITES = [
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR KEY SHARE",
    "SELECT * FROM t FOR UPDATE SKIP LOCKED",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM u",
    "SELECT nextval('seq')",
    "SELECT setval('seq', 1)",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT txid_current()",
    "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
    "SELECT my_function_that_writes()",
    "SELECT public.count(1)",
    "SELECT * INTO new_t FROM t",
    "EXPLAIN ANALYZE DELETE FROM t",
    "EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)",
    "SELECT 1; DELETE FROM t",
    "SELECT 'unterminated",
    "CALL proc()",
    "LOCK TABLE t",
    "SET statement_timeout = 0",
    "COMMIT",
    "",
    "SELECT set_config('a.b', '1', false)",
    'SELECT "weird"(1)',
]


@pytest.mark.parametrize("sql", READS)
def test_reads_are_idempotent(sql: str) -> None:
    assert pg.is_idempotent(sql)


@pytest.mark.parametrize("sql", WRITES)
def test_writes_and_locks_are_not(sql: str) -> None:
    assert not pg.is_idempotent(sql)


def test_connect_params_default() -> None:
    params = pg.connect_params(Settings(query_timeout=2.5, lock_timeout=0.5, connect_timeout=0.3))
    assert params["connect_timeout"] == 2  # libpq minimum; the client deadline is exact
    assert params["keepalives"] == 1
    assert params["keepalives_idle"] == 30
    assert params["tcp_user_timeout"] == (30 + 10 * 3) * 1000
    assert params["options"] == "-c statement_timeout=2500 -c lock_timeout=500"


def test_pgbouncer_mode_uses_set_local_only() -> None:
    s = Settings(query_timeout=1.0, pgbouncer="on", tcp_keepalive=None)
    assert "options" not in pg.connect_params(s)
    assert "keepalives" not in pg.connect_params(s)
    assert pg.session_setup_sql(s, 170000) is None
    sql = pg.local_timeouts_sql(s, 170000)
    assert sql == "SELECT set_config('statement_timeout', '1000', true)"


def test_versioned_gucs() -> None:
    s = Settings(transaction_timeout=3.0)
    assert "transaction_timeout" in (pg.session_setup_sql(s, 170000) or "")
    assert "transaction_timeout" not in (pg.session_setup_sql(s, 150000) or "")
    assert "client_connection_check_interval" in (pg.session_setup_sql(s, 150000) or "")
    assert pg.session_setup_sql(s, 130000) is None


@pytest.mark.parametrize(
    ("mode", "url", "expected"),
    [
        ("on", "postgresql://h/db", True),
        ("off", "postgresql://h:6432/db", False),
        ("auto", "postgresql://h:6432/db", True),
        ("auto", "postgresql://h:5432/db", False),
        ("auto", "postgresql://h/db?pgbouncer=true", True),
    ],
)
def test_pgbouncer_auto(mode: str, url: str, expected: bool) -> None:
    assert pg.uses_pgbouncer(Settings(pgbouncer=mode), url) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "disposition", "reason"),
    [
        ('connection failed: connection to server at "h", port 5432 failed: FATAL:  password'
         ' authentication failed for user "app"', Disposition.FAIL, "auth_failed"),
        ('connection failed: ... failed: FATAL:  database "x" does not exist',
         Disposition.FAIL, "unknown_role_or_database"),
        ("connection failed: ... FATAL:  no pg_hba.conf entry for host", Disposition.FAIL,
         "hba_rejected"),
        ("connection failed: ... FATAL:  the database system is starting up",
         Disposition.RETRY, "cannot_connect_now"),
        ("connection failed: ... FATAL:  sorry, too many clients already", Disposition.RETRY,
         "too_many_connections"),
        ("connection failed: connection refused", Disposition.RETRY, "connect_failed"),
    ],
)  # fmt: skip
def test_connect_fatals(message: str, disposition: Disposition, reason: str) -> None:
    c = pg.classify(psycopg.OperationalError(message))
    assert (c.disposition, c.reason) == (disposition, reason)
