"""Drop-in errors for psycopg users: poolguard's classes that are also psycopg's.

``except psycopg.OperationalError`` keeps catching connect, query and pool timeouts, an open
circuit breaker and ambiguous commits; ``except psycopg_pool.PoolTimeout`` keeps catching a pool
that ran dry; a server-side ``statement_timeout`` stays a ``psycopg.errors.QueryCanceled``.
Every error is chained (``from``) to the driver's original.

:func:`pg_dropin` builds one; ``make_error`` is the give-up policy of ``integrations/_giveup.py``
with psycopg's classes. The error tree itself is ``poolguard/errors.py``.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

from poolguard.backends import postgres as pg
from poolguard.errors import PoolguardError, PoolTimeout, dropin
from poolguard.integrations._giveup import error_factory

__all__ = ["as_dropin", "make_error", "pg_dropin"]


def _foreign(base: type[PoolguardError], orig: BaseException | None) -> type[BaseException]:
    if issubclass(base, PoolTimeout):
        return psycopg_pool.PoolTimeout
    driver = pg.driver_error(orig) if orig is not None else None
    if isinstance(driver, psycopg.OperationalError) and not isinstance(driver, PoolguardError):
        # Keep the driver's own class (QueryCanceled, ConnectionTimeout...) catchable.
        return type(driver)
    return psycopg.OperationalError


def pg_dropin(
    base: type[PoolguardError],
    message: str,
    *,
    orig: BaseException | None = None,
    attempts: int = 0,
    history: object = (),
    hint: str | None = None,
) -> PoolguardError:
    """``base`` that is also ``psycopg_pool.PoolTimeout`` (pool) or an OperationalError."""
    return dropin(
        base,
        _foreign(base, orig),
        message,
        attempts=attempts,
        history=history,  # type: ignore[arg-type]
        hint=hint,
    )


def as_dropin(exc: PoolguardError) -> PoolguardError:
    """A bare poolguard error (deadline spent, breaker open) as its psycopg drop-in twin."""
    if isinstance(exc, psycopg.Error):
        return exc
    return pg_dropin(
        type(exc), exc.message, attempts=exc.attempts, history=exc.history, hint=exc.hint
    )


#: The Guard's error factory for the pool's statements and units of work.
make_error = error_factory(
    pg_dropin,
    as_dropin=as_dropin,
    driver_error=pg.driver_error,
    ambiguous_hint="make it idempotent and pass idempotent=True, or check before re-running",
)
