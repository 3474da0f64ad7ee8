"""``GuardedAsyncConnectionPool``: psycopg_pool's ``AsyncConnectionPool`` with poolguard's rules.

It *is* a ``psycopg_pool.AsyncConnectionPool`` (``async with pool.connection() as conn:``,
``getconn`` / ``putconn``, ``get_stats()`` all work as documented by psycopg); what changes,
each a small override:

- connects are bounded by ``connect_timeout`` on the client (sub-second values work) and the
  background reconnect uses poolguard's backoff instead of 1 s, 2 s, 4 s...;
- checkout validates only when the connection was idle longer than ``validate_idle`` (or is
  suspect after a disconnect); a failed validation discards that connection and takes
  the next at once (psycopg_pool would sleep 1 s, 2 s... between failed checks);
- lifetime (jittered by psycopg_pool) and ``max_idle`` are also enforced at checkout;
- ``getconn`` waits ``min(timeout or acquire_timeout, deadline)`` and raises a PoolTimeout that
  is also ``psycopg_pool.PoolTimeout`` and says whether the pool is busy or cannot connect;
- every query of a handed-out connection runs under the client backstop (see connection.py);
- guarded helpers: :meth:`execute`, :meth:`fetchall`, :meth:`fetchone`, :meth:`fetchval`
  (one statement, retried per the retry-safety rule) and :meth:`transaction` (a unit of work,
  re-run on serialization failures, deadlocks and disconnects before COMMIT).

The decisions are ``_rules.py`` (:class:`PoolRules`); this module only does the I/O. Public
entry point: :mod:`poolguard.postgres`. ``pool.py`` is generated from ``pool_async.py`` by
``tools/async_to_sync.py`` (``make generate``): edit ``pool_async.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from poolguard.backends import postgres as pg
from poolguard.core.retry import Attempts
from poolguard.errors import PoolguardError
from poolguard.integrations.psycopg_pool._errors import as_dropin
from poolguard.integrations.psycopg_pool._keepalive import AsyncKeepaliveMixin
from poolguard.integrations.psycopg_pool._rules import (
    ARMED,
    CLEANUP,
    COMMIT_OF_UNIT,
    DEFAULT_RETRY_SQLSTATES,
    NORMAL,
    RESOLVE_POLL,
    RESOLVE_TIMEOUT,
    STATUS_SQL,
    TERMINATE_SQL,
    UNIT_OF_WORK,
    XID_SQL,
    CommitAborted,
    PoolRules,
    is_deadline_spent,
)
from poolguard.integrations.psycopg_pool.connection import GuardedAsyncConnection, armed

__all__ = ["GuardedAsyncConnectionPool"]

T = TypeVar("T")
Fetch = Callable[[psycopg.AsyncCursor[Any]], Awaitable[T]]


class GuardedAsyncConnectionPool(
    # POOLGUARD_KEEPALIVE (_keepalive.py): registers at the first connect, unregisters at close().
    AsyncKeepaliveMixin,
    psycopg_pool.AsyncConnectionPool[GuardedAsyncConnection],
):
    """A ``psycopg_pool.AsyncConnectionPool`` built by
    :func:`poolguard.postgres.create_async_pool`."""

    def __init__(
        self,
        conninfo: str,
        *,
        rules: PoolRules,
        configure: Callable[[GuardedAsyncConnection], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        self._pg = rules
        self._pg_user_configure = configure
        rules.guard.stats.gauges = self._pg_gauges
        super().__init__(
            conninfo,
            connection_class=GuardedAsyncConnection,
            configure=self._pg_configure,
            check=self._pg_check,
            **kwargs,
        )

    # -- connecting -----------------------------------------------------------------------------
    async def _connect(self, timeout: float | None = None) -> GuardedAsyncConnection:
        rules = self._pg
        started = time.monotonic()
        try:
            with pg.connect_deadline(rules.settings.connect_timeout):
                conn = await super()._connect(timeout)
        except Exception as exc:
            rules.connect_failed(exc)
            raise
        rules.guard.stats.record_create(time.monotonic() - started)
        return conn

    async def _pg_configure(self, conn: GuardedAsyncConnection) -> None:
        rules = self._pg
        rules.connected(conn)
        setup = rules.setup_sql()
        if setup is not None:
            await conn.execute(setup)
            await conn.commit()
        if self._pg_user_configure is not None:
            await self._pg_user_configure(conn)

    async def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # ``attempt``: None for a first try, else the Reconnect scheduled after a failure
        # (psycopg_pool only calls its delay/update_delay/time_to_give_up).
        if attempt is None:
            attempt = self._pg.reconnect_attempt(self.reconnect_timeout)
        await super()._add_connection(attempt, growing)

    # -- checkout -------------------------------------------------------------------------------
    async def getconn(self, timeout: float | None = None) -> GuardedAsyncConnection:
        """psycopg_pool's ``getconn`` bounded by the deadline, with a drop-in PoolTimeout."""
        return await self._pg_acquire(timeout, breaker=True)

    async def _pg_acquire(self, timeout: float | None, *, breaker: bool) -> GuardedAsyncConnection:
        rules = self._pg
        if breaker:
            rules.breaker_check()  # guarded helpers ask the breaker once, in the retry loop
        wait = rules.acquire_wait(timeout)
        started = time.monotonic()
        try:
            conn = await super().getconn(wait)
        except psycopg_pool.PoolTimeout as exc:
            err = rules.pool_timeout(wait, self.get_stats())
            raise err from (rules.last_connect_error or exc)
        finally:
            rules.guard.stats.record_wait(time.monotonic() - started)
        rules.lent()
        if rules.guard.stats.sink is not None:
            rules.record_lent(conn)
        return conn

    async def putconn(self, conn: GuardedAsyncConnection) -> None:
        rules = self._pg
        rules.given_back()
        if rules.guard.stats.sink is not None:
            rules.record_use(conn)
        await super().putconn(conn)

    async def _getconn_with_check_loop(self, deadline: float) -> GuardedAsyncConnection:
        # psycopg_pool sleeps 1 s, 2 s, 4 s... after a failed check. A failed validation only
        # means that connection was stale: discard it and take the next at once. The loop is
        # bounded: each failure removes a connection, and fresh connections are not pinged.
        while True:
            conn = await self._getconn_unchecked(deadline - time.monotonic())
            try:
                await self._check_connection(conn)
            except Exception as exc:
                await self._putconn(conn, from_getconn=True)
                if is_deadline_spent(exc):
                    raise psycopg_pool.PoolTimeout() from None
            except BaseException:
                await self._putconn(conn, from_getconn=True)
                raise
            else:
                return conn

    async def _pg_check(self, conn: GuardedAsyncConnection) -> None:
        """The ``check=`` callback: ping only when idle past ``validate_idle`` (or suspect)."""
        rules = self._pg
        seconds = rules.checkout(conn)
        if seconds is None:
            return
        rules.guard.stats.incr("validations")
        try:
            with armed(conn, seconds):
                await self.check_connection(conn)
            if pg.wrong_role(conn):
                # Alive, but a failover made its server read-only (or a standby) while the
                # URL's target_session_attrs asks otherwise: a ping alone would keep it.
                raise psycopg.OperationalError("the server changed role (failover)")
        except Exception as exc:
            rules.validation_failed(conn, exc)
            raise

    # -- return ---------------------------------------------------------------------------------
    async def _return_connection(self, conn: GuardedAsyncConnection, from_getconn: bool) -> None:
        if not from_getconn:
            conn._pg_returned = time.monotonic()
        await super()._return_connection(conn, from_getconn)

    async def _reset_connection(self, conn: GuardedAsyncConnection) -> None:
        if PoolRules.usable(conn):
            await super()._reset_connection(conn)  # IDLE: nothing to roll back
        else:
            # The ROLLBACK of a returned connection is bounded even when the caller's deadline
            # is spent (it must run to keep the connection).
            conn._pg_mode = CLEANUP
            try:
                await super()._reset_connection(conn)
            finally:
                conn._pg_mode = NORMAL
        if conn._pg_isolation and PoolRules.usable(conn):
            # transaction(isolation_level=...) must not leak to the next user; no round trip:
            # psycopg applies the level at the next BEGIN.
            await conn.set_isolation_level(None)
            conn._pg_isolation = False

    # -- guarded helpers ------------------------------------------------------------------------
    async def execute(
        self, query: Any, params: Any = None, *, idempotent: bool | None = None
    ) -> int:
        """Run one statement in autocommit; return its rowcount. Retried when safe."""
        return await self._pg_statement(query, params, idempotent, _rowcount)

    async def fetchall(
        self, query: Any, params: Any = None, *, idempotent: bool | None = None
    ) -> list[Any]:
        return await self._pg_statement(query, params, idempotent, _fetchall)

    async def fetchone(
        self, query: Any, params: Any = None, *, idempotent: bool | None = None
    ) -> Any:
        return await self._pg_statement(query, params, idempotent, _fetchone)

    async def fetchval(
        self, query: Any, params: Any = None, *, idempotent: bool | None = None
    ) -> Any:
        """The first column of the first row (None when there is no row)."""
        return await self._pg_statement(query, params, idempotent, _fetchval)

    async def _pg_statement(
        self, query: Any, params: Any, idempotent: bool | None, fetch: Fetch[T]
    ) -> T:
        rules = self._pg
        op = rules.statement_op(query, idempotent)

        async def attempt(_attempts: Attempts) -> T:
            conn = await self._pg_acquire(None, breaker=False)
            try:
                return await self._pg_run(conn, query, params, fetch)
            finally:
                await self.putconn(conn)

        try:
            return await rules.guard.arun_with(attempt, op)
        except PoolguardError as exc:
            err = as_dropin(exc)
            if err is exc:
                raise
            raise err from exc.__cause__ or exc

    async def _pg_run(
        self, conn: GuardedAsyncConnection, query: Any, params: Any, fetch: Fetch[T]
    ) -> T:
        """One statement under one backstop: autocommit, or a transaction under PgBouncer."""
        rules = self._pg
        armed = rules.arm(conn)
        conn._pg_mode = ARMED
        try:
            local = rules.local_sql()
            if local is None:
                await conn.set_autocommit(True)
                try:
                    result = await fetch(await conn.execute(query, params))
                finally:
                    await _restore_autocommit(conn)
            else:
                await conn.execute(local)
                result = await fetch(await conn.execute(query, params))
                await conn.commit()
        except Exception as exc:
            err = rules.failed(conn, armed, exc, observe=False)
            if err is exc:
                raise
            raise err from exc
        finally:
            conn._pg_mode = NORMAL
        rules.succeeded(conn, armed)
        return result

    async def transaction(
        self,
        fn: Callable[[GuardedAsyncConnection], Awaitable[T]],
        *,
        retry_on: Collection[str] = DEFAULT_RETRY_SQLSTATES,
        attempts: int | None = None,
        isolation_level: psycopg.IsolationLevel | None = None,
        resolve_ambiguous: bool = False,
    ) -> T:
        """Run ``await fn(conn)`` in one transaction and commit; re-run the whole unit on a fresh
        connection when the server rolled it back (40001, 40P01, 55P03) or the connection died
        before COMMIT. A lost COMMIT reply raises AmbiguousResultError (never re-run).

        ``fn`` may run more than once: keep side effects outside the database out of it.

        ``resolve_ambiguous=True`` records ``txid_current()`` first (one round trip per attempt)
        and, after a lost reply, asks the server (``pg_xact_status``, PostgreSQL >= 13):
        committed → return normally; aborted → re-run; still in progress → terminate the old
        backend, then ask again. Unknowable within 5 s or the deadline → AmbiguousResultError.
        """
        rules = self._pg
        guard = rules.unit_guard(retry_on, attempts)

        async def attempt(a: Attempts) -> T:
            a.op = UNIT_OF_WORK
            conn = await self._pg_acquire(None, breaker=False)
            try:
                return await self._pg_unit(conn, fn, a, isolation_level, resolve_ambiguous)
            finally:
                await self.putconn(conn)

        try:
            return await guard.arun_with(attempt, UNIT_OF_WORK)
        except PoolguardError as exc:
            err = as_dropin(exc)
            if err is exc:
                raise
            raise err from exc.__cause__ or exc

    async def _pg_unit(
        self,
        conn: GuardedAsyncConnection,
        fn: Callable[[GuardedAsyncConnection], Awaitable[T]],
        a: Attempts,
        isolation_level: psycopg.IsolationLevel | None,
        resolve: bool,
    ) -> T:
        rules = self._pg
        rules.begin_unit(conn)
        if isolation_level is not None:
            conn._pg_isolation = True  # restored on return, after the pool's rollback
            await conn.set_isolation_level(isolation_level)
        try:
            local = rules.local_sql()
            if local is not None:
                await conn.execute(local)
            # Recorded first, so the marker exists whatever the unit does before COMMIT.
            marker = await (await conn.execute(XID_SQL)).fetchone() if resolve else None
            result = await fn(conn)
            a.op = COMMIT_OF_UNIT
            began = not rules.usable(conn)  # libpq: a transaction is open, COMMIT has work
            try:
                await conn.commit()
            except Exception as exc:
                if marker is not None and rules.outcome_unknown(began, exc):
                    outcome = await self._pg_resolve(marker)
                    if outcome is True:
                        return result
                    if outcome is False:
                        raise CommitAborted("the lost COMMIT was not applied") from exc
                err = rules.commit_failed(conn, began, exc)
                if err is exc:
                    raise
                raise err from exc
            return result
        finally:
            # The pool rolls back whatever is left (psycopg_pool's reset, bounded by CLEANUP).
            conn._pg_txn_end = None

    async def _pg_resolve(self, marker: Any) -> bool | None:
        """The lost COMMIT's fate, asked on another connection; None when unknowable."""
        xid, pid, timeline = marker
        stop = time.monotonic() + RESOLVE_TIMEOUT
        try:
            while time.monotonic() < stop:
                status, now_on = await self.fetchone(STATUS_SQL, (xid,), idempotent=True)
                if now_on != timeline:  # a failover in between: the xid may be another's
                    self._pg.guard.stats.incr("ambiguous_unresolved.timeline")
                    return None
                found = self._pg.resolved(status)
                if found is not None:
                    return found
                # "in progress": the COMMIT never arrived and the old backend still holds the
                # transaction open; ending that backend aborts it.
                await self.execute(TERMINATE_SQL, (pid,), idempotent=True)
                await asyncio.sleep(RESOLVE_POLL)
        except Exception:
            return None  # stay ambiguous; the check's own failure is not the caller's news
        return None

    # -- observability --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """poolguard's snapshot (counters, waits, breaker) with psycopg_pool's gauges."""
        return self._pg.guard.stats.snapshot()

    def _pg_gauges(self) -> dict[str, Any]:
        return self._pg.gauges(self.get_stats())


async def _restore_autocommit(conn: GuardedAsyncConnection) -> None:
    """Back to psycopg's default for the next user of the connection, or close it."""
    if PoolRules.usable(conn):
        await conn.set_autocommit(False)
    else:
        conn.pgconn.finish()  # mid-query (a fetch failed): unusable; the pool replaces it


async def _rowcount(cur: psycopg.AsyncCursor[Any]) -> int:
    return cur.rowcount


async def _fetchall(cur: psycopg.AsyncCursor[Any]) -> list[Any]:
    return await cur.fetchall()


async def _fetchone(cur: psycopg.AsyncCursor[Any]) -> Any:
    return await cur.fetchone()


async def _fetchval(cur: psycopg.AsyncCursor[Any]) -> Any:
    row = await cur.fetchone()
    if row is None:
        return None
    return row[0] if isinstance(row, tuple) else next(iter(row.values()))
