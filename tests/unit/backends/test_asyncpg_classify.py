"""asyncpg's errors -> retry-safety classification (backends/asyncpg.py), as SQLAlchemy and
poolguard wrap them."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as apg
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from poolguard.backends import asyncpg as backend
from poolguard.core.disposition import Disposition, Scope
from poolguard.errors import QueryTimeout

R, RI, RT, F = (
    Disposition.RETRY,
    Disposition.RETRY_IF_IDEMPOTENT,
    Disposition.RETRY_TRANSACTION,
    Disposition.FAIL,
)


def _sa(err: Exception) -> Exception:
    """What SQLAlchemy's asyncpg dialect raises for ``err`` (its emulated DBAPI error)."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)
    wrapped = dbapi.Error(str(err), err)
    wrapped.__cause__ = err
    return wrapped


def _pg(cls: type[Exception], message: str = "x") -> Exception:
    return cls(message)


@pytest.mark.parametrize(
    ("err", "disposition", "reason", "disconnect", "connect_phase"),
    [
        (_pg(apg.AdminShutdownError), RI, "admin_shutdown", True, False),
        (_pg(apg.ConnectionDoesNotExistError, "connection was closed in the middle of operation"),
         RI, "connection_does_not_exist", True, False),
        (_pg(apg.SerializationError), RT, "serialization_failure", False, False),
        (_pg(apg.DeadlockDetectedError), RT, "deadlock_detected", False, False),
        (_pg(apg.CannotConnectNowError), R, "cannot_connect_now", True, True),
        (_pg(apg.TooManyConnectionsError), R, "too_many_connections", True, True),
        (_pg(apg.QueryCanceledError), F, "statement_timeout", False, False),
        (_pg(apg.InvalidPasswordError), F, "sqlstate_28P01", False, False),
        (_pg(apg.UniqueViolationError), F, "sqlstate_23505", False, False),
        (apg.InterfaceError("cannot perform operation: connection is closed"),
         R, "connection_closed", True, False),
        (apg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
         R, "connection_closing", True, False),
        (apg.InterfaceError("cannot perform operation: another operation is in progress"),
         F, "interface_error", False, False),
        (backend.ConnectTimeoutError("timed out"), R, "connect_timeout", True, True),
        (backend.ConnectFailedError("could not connect"), R, "connect_failed", True, True),
        (ConnectionRefusedError(111, "refused"), R, "connect_refused", True, True),
        (TimeoutError(), F, "statement_timeout", False, False),
        (_pg(apg.ProtocolViolationError, "query_wait_timeout"), R, None, True, True),
    ],
)  # fmt: skip
def test_classification(
    err: Exception, disposition: Disposition, reason: str | None, disconnect: bool,
    connect_phase: bool,
) -> None:  # fmt: skip
    for seen in (err, _sa(err)):
        c = backend.classify(seen)
        assert c.disposition is disposition, (seen, c)
        if reason is not None:
            assert c.reason == reason
        assert c.disconnect is disconnect
        assert c.connect_phase is connect_phase


def test_closed_before_send_marks_the_older_connections_suspect() -> None:
    c = backend.classify(apg.InterfaceError("cannot perform operation: connection is closed"))
    assert c.scope is Scope.POOL  # the server's reason (57P01?) was read while idle and dropped


def test_poolguards_own_timeout_is_looked_under() -> None:
    cut = apg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    err = QueryTimeout("no reply within 1.00s")
    err.__cause__ = _sa(cut)
    assert backend.classify(err).reason == "connection_does_not_exist"  # not "statement_timeout"
    assert backend.sqlstate(err) == "08003"
