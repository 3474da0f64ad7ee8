"""Drop-in errors for SQLAlchemy users: poolguard's classes that are also SQLAlchemy's.

``except sqlalchemy.exc.OperationalError`` keeps catching connect and query timeouts, an open
circuit breaker and ambiguous commits; ``except sqlalchemy.exc.TimeoutError`` keeps catching a
pool that ran dry. Every error is chained (``from``) to the driver's or SQLAlchemy's original.

:func:`sa_dropin` builds one; ``make_error`` is the give-up policy of ``integrations/_giveup.py``
with SQLAlchemy's classes. The error tree itself is ``poolguard/errors.py``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc as sa_exc

from poolguard.errors import PoolguardError, PoolTimeout, dropin
from poolguard.integrations._giveup import error_factory


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


#: The Guard's error factory for statements and checkouts (see ``integrations/_giveup.py``).
make_error = error_factory(
    sa_dropin,
    as_dropin=as_dropin,
    driver_error=driver_error,
    ambiguous_hint="make it idempotent and pass execution_options(idempotent=True), or check",
    marks_invalidated=True,
)
