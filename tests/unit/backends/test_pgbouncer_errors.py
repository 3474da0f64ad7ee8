"""PgBouncer's own errors (all SQLSTATE 08P01): the text decides what is safe to retry."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from poolguard.backends import postgres as pg
from poolguard.core.disposition import Action, Disposition, Operation, Position, Scope, decide

# The texts PgBouncer 1.18 sends (src/objects.c, janitor.c, server.c), as psycopg reports them.
NOT_SENT = [
    ("server login has been failing, try again later (server_login_retry)",
     "pgbouncer_server_login_failing"),
    ("pgbouncer cannot connect to server", "pgbouncer_server_login_failing"),
    ("query_wait_timeout", "pgbouncer_query_wait_timeout"),
    ("query_timeout", "pgbouncer_query_wait_timeout"),
    ("client_login_timeout (server down)", "pgbouncer_login_timeout"),
    ("no more connections allowed (max_client_conn)", "too_many_connections"),
]  # fmt: skip


@pytest.mark.parametrize(("message", "reason"), NOT_SENT)
def test_nothing_sent_is_a_connect_phase_retry(message: str, reason: str) -> None:
    c = pg.classify(pg_errors.ProtocolViolation(message))
    assert (c.disposition, c.reason) == (Disposition.RETRY, reason)
    assert c.connect_phase  # breaker-counted, not charged to the retry budget
    assert c.disconnect  # PgBouncer closes the client after the error
    # A write met it as the first statement of a plain transaction: nothing ran, run it again.
    assert decide(c, Operation(Position.FIRST)) is Action.RETRY
    assert decide(c, Operation(Position.AUTOCOMMIT)) is Action.RETRY


def test_server_conn_crashed_is_after_send() -> None:
    c = pg.classify(pg_errors.ProtocolViolation("server conn crashed?"))
    assert (c.disposition, c.reason) == (
        Disposition.RETRY_IF_IDEMPOTENT,
        "pgbouncer_server_conn_crashed",
    )
    assert decide(c, Operation(Position.AUTOCOMMIT)) is Action.AMBIGUOUS
    assert decide(c, Operation(Position.FIRST, idempotent=True)) is Action.RETRY
    assert decide(c, Operation(Position.FIRST, unit_of_work=True)) is Action.RETRY_TRANSACTION


def test_client_idle_timeout_is_before_send_for_the_pool() -> None:
    # Only clients with no server linked (outside a transaction) are dropped for idleness.
    c = pg.classify(pg_errors.ProtocolViolation("client_idle_timeout"))
    assert c.disposition is Disposition.RETRY
    assert c.scope is Scope.POOL
    assert not c.connect_phase


def test_query_timeout_with_a_space_is_final() -> None:
    # The server ran it too long and PgBouncer cut it: like statement_timeout, not retried.
    c = pg.classify(pg_errors.ProtocolViolation("query timeout"))
    assert (c.disposition, c.reason) == (Disposition.FAIL, "pgbouncer_query_timeout")
    assert c.disconnect


def test_idle_transaction_timeout_loses_the_transaction() -> None:
    c = pg.classify(pg_errors.ProtocolViolation("idle transaction timeout"))
    assert c.disposition is Disposition.RETRY_IF_IDEMPOTENT
    assert decide(c, Operation(Position.LATER, unit_of_work=True)) is Action.RETRY_TRANSACTION


def test_other_protocol_violations_keep_the_generic_rule() -> None:
    c = pg.classify(pg_errors.ProtocolViolation("bad packet"))
    assert (c.disposition, c.reason) == (Disposition.RETRY_IF_IDEMPOTENT, "protocol_violation")


@pytest.mark.parametrize(
    ("message", "disposition", "reason", "connect_phase"),
    [
        ('connection failed: connection to server at "127.0.0.1", port 6432 failed: FATAL:  '
         "server login has been failing, try again later (server_login_retry)",
         Disposition.RETRY, "pgbouncer_server_login_failing", True),
        ("connection failed: ... FATAL:  no such database: nope", Disposition.FAIL,
         "unknown_role_or_database", False),
        ("connection failed: ... FATAL:  no such user: nobody", Disposition.FAIL,
         "unknown_role_or_database", False),
    ],
)  # fmt: skip
def test_pgbouncer_fatals_at_login(
    message: str, disposition: Disposition, reason: str, connect_phase: bool
) -> None:
    c = pg.classify(psycopg.OperationalError(message))
    assert (c.disposition, c.reason, c.connect_phase) == (disposition, reason, connect_phase)


def test_extra_result_at_commit_is_a_lost_reply() -> None:
    # PostgreSQL restarted behind PgBouncer: COMMIT got the session's FATAL besides its reply.
    c = pg.classify(pg_errors.InternalError("received 2 results from command 'COMMIT'"))
    assert c.disposition is Disposition.RETRY_IF_IDEMPOTENT
    assert c.disconnect
    assert decide(c, Operation(Position.COMMIT, unit_of_work=True)) is Action.AMBIGUOUS


def test_admin_kill_condemns_the_pool() -> None:
    # KILL <db> on the admin console closes every client of the database, idle ones included.
    c = pg.classify(pg_errors.ProtocolViolation("database removed"))
    assert (c.disposition, c.reason) == (
        Disposition.RETRY_IF_IDEMPOTENT,
        "pgbouncer_database_killed",
    )
    assert c.scope is Scope.POOL
