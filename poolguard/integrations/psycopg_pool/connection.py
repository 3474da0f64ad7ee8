"""psycopg connections whose every wait on the socket runs under the client backstop.

Why ``wait()``: every psycopg operation that talks to the server (``execute``, ``executemany``,
``copy``, ``stream``, server-side cursor fetches, ``commit``, ``rollback``, pipelines) goes
through ``Connection.wait(generator)``. Overriding that one method bounds all of them, sync and
async, by ``min(query_timeout + grace, deadline, transaction timeout)`` — psycopg sync has no
read timeout at all, and cancelling psycopg async against a frozen server takes ~11 s (see
DESIGN "Known traps"). ``notifies()`` passes its own ``timeout`` and is left alone: waiting for
a notification is not a query.

Connects are bounded too: the classes derive from the deadline-bounded connections of
:mod:`poolguard.backends.postgres` (the pool sets the connect deadline around each connect).
Outside a poolguard pool (``_pg_rules`` is None) they behave exactly like psycopg's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from poolguard.backends import postgres as pg
from poolguard.core.deadline import _deadline
from poolguard.integrations.backstop import watchdog
from poolguard.integrations.psycopg_pool._rules import ARMED, NORMAL

if TYPE_CHECKING:
    from psycopg.abc import PQGen

    from poolguard.integrations.psycopg_pool._rules import PoolRules

__all__ = ["GuardedAsyncConnection", "GuardedConnection", "armed"]

RV = TypeVar("RV")

#: psycopg's own default poll interval (``psycopg.connection._WAIT_INTERVAL``).
WAIT_INTERVAL = 0.1


class _Unset:
    """``wait(timeout=...)`` not given: a statement's wait (``notifies()`` always passes one)."""


_UNSET: Any = _Unset()


class GuardedConnection(pg.DeadlineConnection):
    """A psycopg ``Connection`` bounded by poolguard's backstop when it belongs to a pool."""

    _pg_rules: PoolRules | None = None
    _pg_mode: int = NORMAL
    _pg_created: float = 0.0
    _pg_expires: float = float("inf")
    _pg_returned: float | None = None
    _pg_txn_end: float | None = None
    _pg_isolation: bool = False

    def wait(
        self, gen: PQGen[RV], interval: float = WAIT_INTERVAL, timeout: float | None = _UNSET
    ) -> RV:
        rules = self._pg_rules
        if timeout is not _UNSET or rules is None:
            return super().wait(gen, interval, None if timeout is _UNSET else timeout)
        mode = self._pg_mode
        if mode == ARMED or (
            mode == NORMAL
            and rules.query_limit is None
            and self._pg_txn_end is None
            and _deadline.get() is None
        ):
            # Nothing to bound here (or an outer operation bounds it): no watchdog, no cost.
            try:
                return super().wait(gen, interval)
            except Exception as exc:
                # Under an outer backstop, the outer operation marks (or not: its own cut).
                rules.observe(exc, mark=mode != ARMED)
                raise
        armed = rules.arm(self)
        try:
            result = super().wait(gen, interval)
        except Exception as exc:
            err = rules.failed(self, armed, exc)
            if err is exc:
                raise
            raise err from exc
        rules.succeeded(self, armed)
        return result


class GuardedAsyncConnection(pg.DeadlineAsyncConnection):
    """Async twin of :class:`GuardedConnection` (the same watchdog thread cuts the socket)."""

    _pg_rules: PoolRules | None = None
    _pg_mode: int = NORMAL
    _pg_created: float = 0.0
    _pg_expires: float = float("inf")
    _pg_returned: float | None = None
    _pg_txn_end: float | None = None
    _pg_isolation: bool = False

    async def wait(
        self, gen: PQGen[RV], interval: float = WAIT_INTERVAL, timeout: float | None = _UNSET
    ) -> RV:
        rules = self._pg_rules
        if timeout is not _UNSET or rules is None:
            return await super().wait(gen, interval, None if timeout is _UNSET else timeout)
        mode = self._pg_mode
        if mode == ARMED or (
            mode == NORMAL
            and rules.query_limit is None
            and self._pg_txn_end is None
            and _deadline.get() is None
        ):
            # Nothing to bound here (or an outer operation bounds it): no watchdog, no cost.
            try:
                return await super().wait(gen, interval)
            except Exception as exc:
                # Under an outer backstop, the outer operation marks (or not: its own cut).
                rules.observe(exc, mark=mode != ARMED)
                raise
        armed = rules.arm(self)
        try:
            result = await super().wait(gen, interval)
        except Exception as exc:
            err = rules.failed(self, armed, exc)
            if err is exc:
                raise
            raise err from exc
        rules.succeeded(self, armed)
        return result


@contextmanager
def armed(conn: Any, seconds: float) -> Iterator[None]:
    """One backstop for several waits (a validation ping toggles autocommit, then executes).

    Sync code only inside, or awaits: the watchdog is a thread, the block may await.
    """
    ticket = watchdog().arm(conn.pgconn.socket, seconds)
    conn._pg_mode = ARMED
    try:
        yield
    finally:
        conn._pg_mode = NORMAL
        if not ticket.cancel():
            conn.pgconn.finish()
            err = psycopg.OperationalError(f"no reply within {seconds:.2f}s: connection cut")
            err.poolguard_cut = True  # type: ignore[attr-defined]
            raise err
