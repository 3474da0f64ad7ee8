"""SQLAlchemy 2.0's asyncpg adapter leaves a failed connect's errors and ``InternalClientError``
untranslated (``_asyncpg.py``): poolguard translates them as SQLAlchemy 2.1 does. Pure logic,
run under whichever SQLAlchemy is installed (the floor cell has 2.0.30, the default venv 2.1)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from asyncpg import exceptions as apg
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from poolguard.backends import asyncpg as backend
from poolguard.core.disposition import Action, Disposition, Operation, Position, decide
from poolguard.integrations.sqlalchemy import _asyncpg as adapter

KILLED_WHILE_IDLE = "cannot switch to state 15; another operation (2) is in progress"


def _dbapi() -> Any:
    return AsyncAdapt_asyncpg_dbapi(asyncpg)


def test_internal_client_error_is_in_the_translation_table() -> None:
    dbapi = _dbapi()
    adapter.translate_internal_client_errors(dbapi)
    target = dbapi._asyncpg_error_translate[apg.InternalClientError]
    assert issubclass(target, dbapi.Error)  # so SQLAlchemy wraps it in a DBAPIError
    adapter.translate_internal_client_errors(dbapi)  # idempotent
    assert dbapi._asyncpg_error_translate[apg.InternalClientError] is target


def test_the_translation_table_of_another_engine_is_untouched() -> None:
    ours, theirs = _dbapi(), _dbapi()
    before = dict(theirs._asyncpg_error_translate)
    adapter.translate_internal_client_errors(ours)
    assert theirs._asyncpg_error_translate == before


def test_not_sqlalchemys_adapter_is_left_alone() -> None:
    class Module:
        Error = Exception

    adapter.translate_internal_client_errors(Module())  # no table: nothing to do, no error
    assert adapter.as_dbapi_error(Module(), apg.InvalidPasswordError("x")).__class__ is (
        apg.InvalidPasswordError
    )


@pytest.mark.parametrize(
    ("err", "sqlstate", "disposition"),
    [
        (apg.InvalidPasswordError('password authentication failed for user "app"'), "28P01",
         Disposition.FAIL),
        (backend.ConnectFailedError("could not connect: refused"), "08001", Disposition.RETRY),
        (backend.ConnectTimeoutError("connection timeout expired"), "08001", Disposition.RETRY),
        (apg.InternalClientError(KILLED_WHILE_IDLE), None, Disposition.RETRY),
    ],
)  # fmt: skip
def test_a_translated_error_keeps_its_sqlstate_and_its_classification(
    err: Exception, sqlstate: str | None, disposition: Disposition
) -> None:
    dbapi = _dbapi()
    adapter.translate_internal_client_errors(dbapi)
    translated = adapter.as_dbapi_error(dbapi, err)
    assert isinstance(translated, dbapi.Error)
    assert translated.sqlstate == sqlstate
    translated.__cause__ = err  # as raised (``raise translated from err``)
    assert backend.classify(translated).disposition is disposition
    assert backend.classify(translated) == backend.classify(err)


def test_what_the_adapter_never_translates_stays_as_it_is() -> None:
    dbapi = _dbapi()
    refused = ConnectionRefusedError(111, "refused")
    assert adapter.as_dbapi_error(dbapi, refused) is refused
    already = dbapi.InterfaceError("translated already")
    assert adapter.as_dbapi_error(dbapi, already) is already


@pytest.mark.parametrize(
    ("position", "unit_of_work", "action"),
    [
        (Position.AUTOCOMMIT, False, Action.RETRY),  # an autocommit write: nothing was sent
        (Position.FIRST, False, Action.RETRY),
        (Position.LATER, True, Action.RETRY_TRANSACTION),  # earlier work died with the backend
        (Position.COMMIT, True, Action.RETRY_TRANSACTION),  # never sent: not ambiguous
        (Position.COMMIT, False, Action.FAIL),
    ],
)
def test_killed_while_idle_is_before_send_for_writes_too(
    position: Position, unit_of_work: bool, action: Action
) -> None:
    # asyncpg switches its protocol state before writing any message (coreproto.pyx).
    c = backend.classify(apg.InternalClientError(KILLED_WHILE_IDLE))
    op = Operation(position, idempotent=False, unit_of_work=unit_of_work)
    assert decide(c, op) is action
