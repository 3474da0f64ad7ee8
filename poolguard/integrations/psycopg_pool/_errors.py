"""Drop-in errors for psycopg users: poolguard's classes that are also psycopg's.

``except psycopg.OperationalError`` keeps catching connect, query and pool timeouts, an open
circuit breaker and ambiguous commits; ``except psycopg_pool.PoolTimeout`` keeps catching a pool
that ran dry; a server-side ``statement_timeout`` stays a ``psycopg.errors.QueryCanceled``.
Every error is chained (``from``) to the driver's original.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

from poolguard.backends import postgres as pg
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

__all__ = ["as_dropin", "make_error", "pg_dropin"]

#: Server-side timeouts reported as poolguard timeouts (reason → class, what to tune).
_SERVER_TIMEOUTS: dict[str, tuple[type[PoolguardError], str]] = {
    "statement_timeout": (QueryTimeout, "raise POOLGUARD_QUERY_TIMEOUT or make the query faster"),
    "idle_in_transaction_timeout": (
        TransactionTimeout,
        "raise POOLGUARD_IDLE_IN_TRANSACTION_TIMEOUT or do less between statements",
    ),
    "connect_timeout": (ConnectTimeout, "raise POOLGUARD_CONNECT_TIMEOUT or check the network"),
}


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


def make_error(g: GiveUp) -> BaseException:
    """The Guard's error factory for the pool's statements and units of work."""
    err = g.error
    if isinstance(err, PoolguardError):
        return as_dropin(err)
    if g.action is Action.AMBIGUOUS:
        return pg_dropin(
            AmbiguousResultError,
            f"{g.pool}: the outcome is unknown ({g.classification.reason}): the statement may"
            " have been applied, so it was not retried",
            orig=err,
            attempts=g.attempts,
            history=g.history,
            hint="make it idempotent and pass idempotent=True, or check before re-running",
        )
    timeout = _SERVER_TIMEOUTS.get(g.classification.reason)
    if timeout is not None:
        cls, hint = timeout
        return pg_dropin(
            cls,
            f"{g.pool}: {g.classification.reason.replace('_', ' ')} ({pg.driver_error(err)})",
            orig=err,
            attempts=g.attempts,
            history=g.history,
            hint=hint,
        )
    if g.attempts > 1 and hasattr(err, "add_note"):
        err.add_note(f"poolguard: gave up after {g.attempts} attempts: {g.why}")
    return err
