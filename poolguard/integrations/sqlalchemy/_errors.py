"""Drop-in errors for SQLAlchemy users: poolguard's classes that are also SQLAlchemy's.

``except sqlalchemy.exc.OperationalError`` keeps catching connect and query timeouts, an open
circuit breaker and ambiguous commits; ``except sqlalchemy.exc.TimeoutError`` keeps catching a
pool that ran dry. Every error is chained (``from``) to the driver's or SQLAlchemy's original.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc as sa_exc

from poolguard.core.disposition import Action
from poolguard.core.retry import GiveUp
from poolguard.errors import (
    AmbiguousResultError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin,
)

#: Server-side timeouts reported as poolguard timeouts (reason → class, what to tune).
_SERVER_TIMEOUTS: dict[str, tuple[type[PoolguardError], str]] = {
    "statement_timeout": (QueryTimeout, "raise POOLGUARD_QUERY_TIMEOUT or make the query faster"),
    "idle_in_transaction_timeout": (
        TransactionTimeout,
        "raise POOLGUARD_IDLE_IN_TRANSACTION_TIMEOUT or do less between statements",
    ),
    # PyMySQL's read_timeout (the socket-level second line behind the watchdog) fired.
    "read_timeout": (QueryTimeout, "raise POOLGUARD_QUERY_TIMEOUT or make the query faster"),
    "connect_timeout": (ConnectTimeout, "raise POOLGUARD_CONNECT_TIMEOUT or check the network"),
}


def driver_error(exc: BaseException) -> BaseException:
    """The driver's error under SQLAlchemy's and poolguard's wrappers (any dialect)."""
    seen = 0
    while isinstance(exc, (sa_exc.SQLAlchemyError, PoolguardError)) and seen < 5:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc, seen = inner, seen + 1
    return exc


def sa_dropin(
    base: type[PoolguardError],
    message: str,
    *,
    orig: BaseException | None = None,
    attempts: int = 0,
    history: Any = (),
    hint: str | None = None,
    invalidated: bool = False,
) -> PoolguardError:
    """``base`` that is also ``sqlalchemy.exc.TimeoutError`` (pool) or ``OperationalError``."""
    foreign: type[BaseException] = (
        sa_exc.TimeoutError if issubclass(base, PoolTimeout) else sa_exc.OperationalError
    )
    driver = driver_error(orig) if orig is not None else None
    return dropin(
        base,
        foreign,
        message,
        attempts=attempts,
        history=history,
        hint=hint,
        orig=driver,
        statement=getattr(orig, "statement", None),
        params=getattr(orig, "params", None),
        connection_invalidated=invalidated,
        detail=[],
        code=None,
        hide_parameters=True,
        ismulti=None,
        dialect=None,
    )


def as_dropin(exc: PoolguardError) -> PoolguardError:
    """A bare poolguard error (deadline spent, breaker open) as its SQLAlchemy drop-in twin."""
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return exc
    return sa_dropin(
        type(exc), exc.message, attempts=exc.attempts, history=exc.history, hint=exc.hint
    )


def make_error(g: GiveUp) -> BaseException:
    """The Guard's error factory for statements and checkouts (see core ``GiveUp``)."""
    err = g.error
    if isinstance(err, PoolguardError):
        return as_dropin(err)
    if g.action is Action.AMBIGUOUS:
        return sa_dropin(
            AmbiguousResultError,
            f"{g.pool}: the outcome is unknown ({g.classification.reason}): the statement may"
            " have been applied, so it was not retried",
            orig=err,
            attempts=g.attempts,
            history=g.history,
            hint="make it idempotent and pass execution_options(idempotent=True), or check",
            invalidated=True,
        )
    timeout = _SERVER_TIMEOUTS.get(g.classification.reason)
    if timeout is not None:
        cls, hint = timeout
        return sa_dropin(
            cls,
            f"{g.pool}: {g.classification.reason.replace('_', ' ')} ({driver_error(err)})",
            orig=err,
            attempts=g.attempts,
            history=g.history,
            hint=hint,
            invalidated=g.classification.disconnect,
        )
    if g.attempts > 1 and hasattr(err, "add_note"):
        err.add_note(f"poolguard: gave up after {g.attempts} attempts: {g.why}")
    return err
