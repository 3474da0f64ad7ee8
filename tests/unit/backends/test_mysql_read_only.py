"""MySQL/MariaDB read-only refusals after a switchover: not applied, retried anywhere, and every
connection opened before the refusal is replaced (it still answers pings)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from pymysql import err as my_errors

from poolguard.backends import mysql
from poolguard.core.disposition import Action, Disposition, Operation, Position, Scope, decide
from poolguard.integrations.sqlalchemy._backend import _OPENED_AT, MySQLBackend

READ_ONLY_ERRNOS = [
    (1290, "The MariaDB server is running with the --read-only option so it cannot execute"
           " this statement"),
    (1836, "Running in read-only mode"),
    (1792, "Cannot execute statement in a READ ONLY transaction"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "message"), READ_ONLY_ERRNOS)
def test_read_only_is_not_applied(code: int, message: str) -> None:
    c = mysql.classify(my_errors.OperationalError(code, message))
    assert (c.disposition, c.reason, c.scope) == (Disposition.RETRY, "read_only", Scope.POOL)
    assert c.refused
    assert c.disconnect
    assert not c.connect_phase
    assert decide(c, Operation(Position.AUTOCOMMIT)) is Action.RETRY  # a write: run it again
    assert decide(c, Operation(Position.FIRST)) is Action.RETRY
    # A refused COMMIT (MariaDB refuses the COMMIT of a transaction that wrote before
    # read_only=ON): nothing committed, the unit is re-run; a plain transaction surfaces it.
    assert decide(c, Operation(Position.COMMIT, unit_of_work=True)) is Action.RETRY_TRANSACTION
    assert decide(c, Operation(Position.COMMIT)) is Action.FAIL


def test_connections_opened_before_a_refusal_are_replaced() -> None:
    backend = MySQLBackend(0.5)
    old, new = SimpleNamespace(), SimpleNamespace()
    setattr(old, _OPENED_AT, time.time() - 10)
    assert not backend.wrong_role(old)
    backend.classify(my_errors.OperationalError(1290, "read-only"))
    setattr(new, _OPENED_AT, time.time() + 1)
    assert backend.wrong_role(old)
    assert not backend.wrong_role(new)
    assert not backend.wrong_role(SimpleNamespace())  # not stamped: never judged


def test_other_errors_leave_connections_alone() -> None:
    backend = MySQLBackend(0.5)
    conn = SimpleNamespace()
    setattr(conn, _OPENED_AT, time.time() - 10)
    backend.classify(my_errors.OperationalError(2013, "Lost connection"))
    assert not backend.wrong_role(conn)
