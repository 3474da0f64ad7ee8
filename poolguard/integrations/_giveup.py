"""One give-up policy for every SQL integration: which poolguard error a final failure becomes.

The decision is the same whether the user holds a SQLAlchemy engine or a psycopg pool — a poolguard
error stays itself, a lost reply becomes :class:`AmbiguousResultError`, a server-side timeout
becomes the matching poolguard timeout, anything else is the driver's error annotated with the
attempt count. Only the *drop-in class* differs (``sqlalchemy.exc.OperationalError`` vs
``psycopg.OperationalError``); each integration passes its builder as ``wrap`` to
:func:`error_factory` (``sqlalchemy/_errors.py``, ``psycopg_pool/_errors.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from poolguard.core.disposition import Action
from poolguard.core.retry import GiveUp, error_text
from poolguard.errors import (
    AmbiguousResultError,
    ConnectTimeout,
    PoolguardError,
    QueryTimeout,
    TransactionTimeout,
)

__all__ = ["SERVER_TIMEOUTS", "Wrap", "error_factory"]

#: Server-side timeouts reported as poolguard timeouts (classification reason → class, hint).
SERVER_TIMEOUTS: dict[str, tuple[type[PoolguardError], str]] = {
    "statement_timeout": (QueryTimeout, "raise POOLGUARD_QUERY_TIMEOUT or make the query faster"),
    "idle_in_transaction_timeout": (
        TransactionTimeout,
        "raise POOLGUARD_IDLE_IN_TRANSACTION_TIMEOUT or do less between statements",
    ),
    # PyMySQL's read_timeout (the socket-level second line behind the watchdog) fired.
    "read_timeout": (QueryTimeout, "raise POOLGUARD_QUERY_TIMEOUT or make the query faster"),
    "connect_timeout": (ConnectTimeout, "raise POOLGUARD_CONNECT_TIMEOUT or check the network"),
}


class Wrap(Protocol):
    """An integration's drop-in builder (``sa_dropin``, ``pg_dropin``)."""

    def __call__(
        self,
        base: type[PoolguardError],
        message: str,
        *,
        orig: BaseException | None = ...,
        attempts: int = ...,
        history: Any = ...,
        hint: str | None = ...,
    ) -> PoolguardError: ...


def error_factory(
    wrap: Wrap,
    *,
    as_dropin: Callable[[PoolguardError], PoolguardError],
    driver_error: Callable[[BaseException], BaseException],
    ambiguous_hint: str,
    marks_invalidated: bool = False,
) -> Callable[[GiveUp], BaseException]:
    """The Guard's ``make_error`` for one integration.

    ``marks_invalidated``: ``wrap`` takes ``invalidated=`` (SQLAlchemy's
    ``connection_invalidated``), set when the connection died with the error.
    """

    def make_error(g: GiveUp) -> BaseException:
        err = g.error
        if isinstance(err, PoolguardError):
            return as_dropin(err)
        if g.classification.connect_phase:
            return _cannot_connect(g, wrap, driver_error, marks_invalidated)
        if g.action is Action.AMBIGUOUS:
            return wrap(
                AmbiguousResultError,
                f"{g.pool}: the outcome is unknown ({g.classification.reason}): the statement"
                " may have been applied, so it was not retried",
                orig=err,
                attempts=g.attempts,
                history=g.history,
                hint=ambiguous_hint,
                **({"invalidated": True} if marks_invalidated else {}),
            )
        timeout = SERVER_TIMEOUTS.get(g.classification.reason)
        if timeout is not None:
            cls, hint = timeout
            kw = {"invalidated": g.classification.disconnect} if marks_invalidated else {}
            return wrap(
                cls,
                f"{g.pool}: {g.classification.reason.replace('_', ' ')} ({driver_error(err)})",
                orig=err,
                attempts=g.attempts,
                history=g.history,
                hint=hint,
                **kw,
            )
        if g.attempts > 1 and hasattr(err, "add_note"):
            err.add_note(f"poolguard: gave up after {g.attempts} attempts: {g.why}")
        return err

    return make_error


def _cannot_connect(
    g: GiveUp,
    wrap: Wrap,
    driver_error: Callable[[BaseException], BaseException],
    marks_invalidated: bool,
) -> BaseException:
    # The headline says what is unreachable and the driver's last words; the class stays what
    # users catch (OperationalError), ConnectTimeout when the connect timed out.
    err = g.error
    message, hint = g.cannot_connect(error_text(driver_error(err)))
    cls = ConnectTimeout if g.classification.reason == "connect_timeout" else PoolguardError
    kw = {"invalidated": False} if marks_invalidated else {}
    return wrap(cls, message, orig=err, attempts=g.attempts, history=g.history, hint=hint, **kw)
