"""Statement-level guard: :class:`GuardedConnection`, a ``sqlalchemy.engine.Connection`` subclass.

Why a Connection subclass (installed as ``engine._connection_cls``) rather than events or the
dialect's ``do_execute``: a transparent retry must (1) know where the statement stands in its
transaction *before* it runs, (2) get a *new* DBAPI connection after a disconnect while keeping
the caller's ``Connection``/``RootTransaction``/``Session`` objects valid, and (3) re-run the
whole execution (context construction, cursor, result), not just ``cursor.execute``.
``_execute_context`` is the one method every Core, ORM and ``exec_driver_sql`` execution goes
through, with the compiled statement and the merged execution options in hand. ``handle_error``
can only rewrite the exception, ``do_execute`` runs on a cursor bound to the dead connection,
and SQLAlchemy's FAQ recipe ("How do I retry a statement execution automatically?") is the same
``_execute_context`` override, which we follow and make safe:

- only the *first* statement of a transaction (libpq reports the transaction IDLE; MySQL's
  last reply had no ``SERVER_STATUS_IN_TRANS``) or an
  autocommit statement is retried, and only if it is a read, ``idempotent=True`` was set, or the
  failure happened before anything was sent (connect phase, "sending query failed");
- the retry swaps a fresh DBAPI connection under the same ``RootTransaction``: nothing was
  done in the lost DBAPI transaction (psycopg's BEGIN is implicit, sent with the first
  statement; MySQL's transaction starts implicitly with it too), so the caller's transaction
  object keeps its meaning;
- connection characteristics set on this Connection (``isolation_level="AUTOCOMMIT"``,
  read-only...) are set again on the fresh DBAPI connection and undone when it returns to the
  pool, as SQLAlchemy does for the one it replaces;
- a mid-transaction failure is never retried here: it propagates, and ``run_transaction``
  re-runs the whole unit.

Every statement, commit and rollback also runs under the client backstop
(``min(query_timeout + grace, deadline, transaction deadline)``; a ROLLBACK gets
``(query_timeout or VALIDATE_TIMEOUT) + grace`` even past the deadline) whenever a statement
timeout or a deadline is configured; with neither, nothing bounds a statement, so no watchdog
ticket is armed for it or its ROLLBACK. A lost COMMIT reply of a transaction that wrote raises
:class:`~poolguard.AmbiguousResultError`.

``close()`` does not wait for its ROLLBACK's reply (PostgreSQL): the ROLLBACK is sent, the server
ends the transaction on reading it, and the pool's next checkout of that connection reads the
reply (``_backend.SqlBackend.settle``), discarding the connection if none comes within
``VALIDATE_TIMEOUT`` or the deadline. One round trip less for the caller of every read-only
``engine.connect()`` block; see :meth:`GuardedConnection._guard_defer_rollback` for when it
applies. The transaction's BEGIN goes out with its first statement (the engine's psycopg
connections use ``backends.postgres.FirstStatementCursor``): a read-only ``engine.connect()``
block waits for one reply, like a single autocommit statement.

Cost: a statement that succeeds runs one admission check of the core loop
(``Guard.first_attempt``) and SQLAlchemy's own ``_execute_context``; the retry loop (an
``Attempts``, a closure) is built only after a failure (``Guard.resume_with``), with the same
decisions, counting and breaker accounting as if it had run from the start.

Checkout and its retries are ``pool.py``; whole units of work are ``transaction.py``; what the
driver reports (transaction status, error class) is asked of ``_backend.py``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.pool.base import reset_none

from poolguard.core.deadline import current_deadline
from poolguard.core.disposition import Action, Operation, Position, decide
from poolguard.core.retry import Attempts
from poolguard.errors import AmbiguousResultError, PoolguardError, QueryTimeout, TransactionTimeout
from poolguard.integrations.backstop import Ticket, watchdog
from poolguard.integrations.sqlalchemy._errors import as_dropin, sa_dropin
from poolguard.integrations.sqlalchemy._state import (
    BACKSTOP_GRACE,
    VALIDATE_TIMEOUT,
    EngineState,
    in_statement_loop,
)
from poolguard.integrations.sqlalchemy.pool import driver_of, socket_of

__all__ = ["GuardedConnection", "GuardedOptionEngine"]


Limit = tuple[float, type[PoolguardError], str]


class GuardedConnection(Connection):
    """A SQLAlchemy Connection whose statements run under poolguard's retry rule and backstop."""

    _guard_wrote = False
    _guard_txn_started: float | None = None
    _guard_closing = False

    # -- statements -----------------------------------------------------------------------------
    def _execute_context(
        self,
        dialect: Any,
        constructor: Any,
        statement: Any,
        parameters: Any,
        execution_options: Any,
        *args: Any,
        **kw: Any,
    ) -> Any:
        state: EngineState | None = getattr(self.engine.pool, "_guard_state", None)
        if state is None:
            return super()._execute_context(
                dialect, constructor, statement, parameters, execution_options, *args, **kw
            )
        position, idempotent = self._guard_mark(state, statement, parameters, execution_options)
        # PgBouncer: the transaction's timeouts go in before its first statement.
        local_sql = (
            state.local_timeouts_sql() if state.pgbouncer and position is Position.FIRST else None
        )
        call = (dialect, constructor, statement, parameters, execution_options, *args)
        # Fast path: most statements succeed at once, and the retry loop (an Attempts object, a
        # closure) is only needed once one failed. first_attempt() does the loop's first checks
        # and bookkeeping; a failure continues the very same loop through resume_with().
        guard = state.guard
        started = guard.first_attempt()
        if started is not None:
            try:
                if (
                    local_sql is None
                    and self._dbapi_connection is not None
                    and not state.bounded
                    and current_deadline() is None
                ):
                    # Nothing to arm, nothing to reconnect: SQLAlchemy's own execution.
                    result = super()._execute_context(*call, **kw)
                else:
                    result = self._guard_attempt(state, local_sql, call, kw)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                guard.breaker.record_success()
                return result
        else:
            failure = None
        op = Operation(position, idempotent=idempotent)
        return self._guard_retry(state, op, local_sql, call, kw, failure, started)

    def _guard_mark(
        self, state: EngineState, statement: Any, parameters: Any, options: Any
    ) -> tuple[Position, bool]:
        """Where this statement stands in its transaction and whether it may run twice; marks
        the transaction as written to / started (for COMMIT ambiguity and its timeouts)."""
        position = self._guard_position(state)
        idempotent = self._guard_idempotent(state, statement, parameters, options)
        if not idempotent:
            self._guard_wrote = True
        if position is not Position.LATER:
            # The clock only matters for transaction_timeout; MySQL's position needs the mark.
            self._guard_txn_started = (
                time.monotonic() if state.settings.transaction_timeout else 0.0
            )
        return position, idempotent

    def _guard_retry(
        self,
        state: EngineState,
        op: Operation,
        local_sql: str | None,
        call: tuple[Any, ...],
        kw: dict[str, Any],
        failure: Exception | None,
        started: float | None,
    ) -> Any:
        """The core retry loop (from its start, or resumed after a failed first attempt)."""

        def attempt(attempts: Attempts) -> Any:
            if attempts.number > 1:
                self._guard_reattach(state)
            return self._guard_attempt(state, local_sql, call, kw)

        guard = state.guard
        token = in_statement_loop.set(True)
        try:
            if failure is None or started is None:
                return guard.run_with(attempt, op, sleep=state.sleep)
            return guard.resume_with(attempt, failure, started, op, sleep=state.sleep)
        except PoolguardError as exc:
            if isinstance(exc, sa_exc.SQLAlchemyError):
                raise
            raise as_dropin(exc) from exc.__cause__ or exc
        finally:
            in_statement_loop.reset(token)

    def _guard_attempt(
        self, state: EngineState, local_sql: str | None, call: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        conn = self._dbapi_connection
        if conn is None:
            # A checkout inside the statement: its failures are this statement's retry loop's
            # to handle (counted once), not the pool's.
            token = in_statement_loop.set(True)
            try:
                conn = self._revalidate_connection()
            finally:
                in_statement_loop.reset(token)
        if local_sql is None and not state.bounded and current_deadline() is None:
            return super()._execute_context(*call, **kw)  # unbounded: see _guard_limit
        return self._guard_guarded(
            state, conn, super()._execute_context, call, kw=kw, local_sql=local_sql
        )

    def _guard_idempotent(
        self, state: EngineState, statement: Any, parameters: Any, options: Any
    ) -> bool:
        if options.get("idempotent"):
            return True
        if isinstance(parameters, list) and len(parameters) > 1:
            return False  # executemany
        sql = getattr(statement, "string", statement)
        return isinstance(sql, str) and state.backend.is_idempotent(sql)

    def _guard_position(self, state: EngineState) -> Position:
        if self._nested_transaction is not None:
            return Position.LATER
        if self._is_autocommit_isolation():
            return Position.AUTOCOMMIT
        conn = self._dbapi_connection
        idle = None if conn is None else state.backend.is_idle(driver_of(conn))
        if idle is None:
            # No connection, or the driver no longer knows the transaction state (broken):
            # assume earlier work of an open transaction may be lost.
            return Position.FIRST if self._transaction is None else Position.LATER
        if idle and not state.backend.exact_transaction_status:
            # MySQL: a read-only transaction is invisible in the status flags; a statement
            # already ran in this transaction iff its start time is set (reset at its end).
            started = self._transaction is not None and self._guard_txn_started is not None
            return Position.LATER if started else Position.FIRST
        return Position.FIRST if idle else Position.LATER

    def _guard_reattach(self, state: EngineState) -> None:
        """Before a retry: make sure a live, idle DBAPI connection sits under this Connection."""
        conn = self._dbapi_connection
        if conn is not None:
            if state.backend.is_idle(driver_of(conn)):
                return
            self.invalidate()
        # Same RootTransaction, fresh DBAPI connection: see the module docstring for why.
        self._dbapi_connection = fresh = self.engine.raw_connection()
        characteristics = self._guard_characteristics()
        if characteristics:
            self._guard_reapply(fresh, characteristics)

    def _guard_characteristics(self) -> dict[str, Any]:
        """Characteristics set on this Connection (isolation level, read-only...): they live on
        its DBAPI connection, so a fresh one needs them again. Which options are
        characteristics is the dialect's own table."""
        known = getattr(self.dialect, "connection_characteristics", {})  # DefaultDialect's
        options = self._execution_options
        return {name: options[name] for name in known if name in options}

    def _guard_reapply(self, fresh: Any, characteristics: dict[str, Any]) -> None:
        # What SQLAlchemy's dialect._set_connection_characteristics does, minus its refusal
        # inside a transaction: this RootTransaction's DBAPI transaction was lost with the old
        # connection, nothing ran on the fresh one. Without it an AUTOCOMMIT connection never
        # moved, so its reads (and resolve_ambiguous's pg_xact_status) were not retried.
        dialect: Any = self.dialect  # a DefaultDialect: the Dialect interface lacks these
        for name, value in characteristics.items():
            characteristic = dialect.connection_characteristics[name]
            characteristic.set_connection_characteristic(
                dialect, self, fresh.dbapi_connection, value
            )
        fresh._connection_record.finalize_callback.append(
            functools.partial(dialect._reset_characteristics, characteristics)
        )

    # -- backstop -------------------------------------------------------------------------------
    def _guard_limit(self, state: EngineState, *, cleanup: bool = False) -> Limit | None:
        settings = state.settings
        at = current_deadline()
        if cleanup:
            # A ROLLBACK must run even when the caller's deadline is spent; bound it anyway —
            # when anything bounds this engine's calls. With no timeout and no deadline a
            # statement may wait forever, and so may its ROLLBACK (no watchdog ticket per close).
            if at is None and not state.bounded:
                return None
            bound = (settings.query_timeout or VALIDATE_TIMEOUT) + BACKSTOP_GRACE
            return (bound, QueryTimeout, "rollback timeout")
        if at is None and not state.bounded:
            return None  # the common configuration: nothing to arm
        limits: list[Limit] = []
        if settings.query_timeout:
            limits.append((settings.query_timeout + BACKSTOP_GRACE, QueryTimeout, "query timeout"))
        if at is not None:
            limits.append((at - time.monotonic(), QueryTimeout, "deadline"))
        if settings.transaction_timeout and self._guard_txn_started is not None:
            spent = time.monotonic() - self._guard_txn_started
            limits.append(
                (settings.transaction_timeout - spent, TransactionTimeout, "transaction timeout")
            )
        return min(limits, key=_seconds) if limits else None

    def _guard_guarded(
        self,
        state: EngineState,
        conn: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        kw: dict[str, Any] | None = None,
        local_sql: str | None = None,
        cleanup: bool = False,
    ) -> Any:
        limit = self._guard_limit(state, cleanup=cleanup)
        if limit is None:
            # Nothing bounds this call: no watchdog ticket to arm and cancel.
            if local_sql is not None:
                _run_sql(conn, local_sql)
            return fn(*args, **kw) if kw else fn(*args)
        if limit[0] <= 0:
            raise sa_dropin(
                limit[1], f"{state.name}: {limit[2]} exceeded before the statement started"
            )
        # arm/cancel inline rather than through backstop(): this runs for every statement
        ticket: Ticket | None = None
        fd = socket_of(state, conn)
        if fd is not None:  # None: already closed, the call fails at once
            ticket = watchdog().arm(fd, limit[0])
        try:
            if local_sql is not None:
                _run_sql(conn, local_sql)
            result = fn(*args, **kw) if kw else fn(*args)
        except Exception as exc:
            if ticket is not None and not ticket.cancel():
                raise self._guard_cut(state, limit, exc) from exc
            raise
        except BaseException:
            if ticket is not None:
                ticket.cancel()
            raise
        if ticket is not None and not ticket.cancel():
            raise self._guard_cut(state, limit, None)
        return result

    def _guard_cut(
        self, state: EngineState, limit: Limit, exc: BaseException | None
    ) -> PoolguardError:
        seconds, cls, what = limit
        state.guard.stats.evict("timeout")
        if not self.invalidated and not self.closed:
            self.invalidate(exc)
        err = sa_dropin(
            cls,
            f"{state.name}: no reply within {max(seconds, 0):.2f}s ({what}); the connection was"
            " cut and discarded (the server may be frozen, or the network down)",
            orig=exc,
            hint=f"raise the {what} if the work is legitimately slow",
            invalidated=True,
        )
        err.poolguard_cut = True  # type: ignore[attr-defined]
        return err

    # -- transaction end ------------------------------------------------------------------------
    def _commit_impl(self) -> None:
        state: EngineState | None = getattr(self.engine.pool, "_guard_state", None)
        conn = self._dbapi_connection
        wrote, self._guard_wrote, self._guard_txn_started = self._guard_wrote, False, None
        if state is None or conn is None:
            super()._commit_impl()
            return
        try:
            self._guard_guarded(state, conn, super()._commit_impl)
        except AmbiguousResultError:
            raise
        except PoolguardError as exc:
            if wrote and getattr(exc, "poolguard_cut", False):
                raise _ambiguous(state, exc) from exc  # cut with the COMMIT in flight
            raise
        except sa_exc.DBAPIError as exc:
            c = state.backend.classify(exc)
            if wrote and decide(c, Operation(Position.COMMIT)) is Action.AMBIGUOUS:
                raise _ambiguous(state, exc) from exc
            raise

    def close(self) -> None:
        # Marks the ROLLBACK that SQLAlchemy runs from here as the last use of the DBAPI
        # connection before it goes back to the pool (see _guard_defer_rollback).
        self._guard_closing = True
        super().close()

    def _rollback_impl(self) -> None:
        self._guard_wrote, self._guard_txn_started = False, None
        state: EngineState | None = getattr(self.engine.pool, "_guard_state", None)
        conn = self._dbapi_connection
        if state is None or conn is None or not self._still_open_and_dbapi_connection_is_valid:
            super()._rollback_impl()
            return
        try:
            if self._guard_closing and self._guard_defer_rollback(state, conn):
                return
            if state.bounded or current_deadline() is not None:
                self._guard_guarded(state, conn, super()._rollback_impl, cleanup=True)
            else:
                super()._rollback_impl()  # nothing bounds it: no watchdog (see _guard_limit)
        except PoolguardError:
            # The server did not answer the ROLLBACK: it rolls back by itself when the (now
            # closed) connection goes away. Nothing was committed, so this is not an error.
            pass
        except sa_exc.DBAPIError as exc:
            # Same when the connection died under the ROLLBACK (a restart between the last
            # statement and close()): SQLAlchemy has invalidated it; the work is rolled back.
            if not state.backend.classify(exc).disconnect:
                raise

    def _guard_defer_rollback(self, state: EngineState, conn: Any) -> bool:
        """The ROLLBACK of ``close()``: send it, do not wait for its reply.

        The server ends the transaction as soon as it reads the ROLLBACK, so the connection
        goes back to the pool outside any transaction; its reply is read by the pool's
        checkout (``_vetted`` -> ``backend.settle``) before the connection is used again, and
        a reply that never comes (or an error) discards the connection there, bounded. The
        caller does not wait for a reply it could not act on: nothing was committed, and a
        failed ROLLBACK of a live connection only ever means the connection is gone.

        Only when the connection will sit idle: with a caller already waiting for it, the
        reply would be read at once by that caller (a wait moved, not saved, and with asyncio
        an await inside its checkout). And only when nothing else touches the DBAPI
        connection between this send and that checkout: the pool's own reset is poolguard's
        (not a ``pool=`` instance's reset_on_return, which would send a second command while
        the first is unread), no ``checkin`` listener or other ``reset`` listener, no
        characteristics to undo at checkin (isolation level, read-only: psycopg refuses to
        change them while busy).
        """
        driver = driver_of(conn)
        if not state.backend.rollback_deferrable(driver):
            return False
        pool: Any = self.engine.pool
        record = getattr(conn, "_connection_record", None)
        if (
            record is None
            or record.finalize_callback
            or pool._reset_on_return is not reset_none
            or pool.dispatch.checkin
            or len(pool.dispatch.reset) > 1
            or _has_waiters(pool)
        ):
            return False
        # What SQLAlchemy's _rollback_impl does around dialect.do_rollback().
        if self._has_events or self.engine._has_events:
            self.dispatch.rollback(self)
        if self._echo:
            self._log_info("ROLLBACK (reply read at the next checkout)")
        try:
            state.backend.send_rollback(driver)
        except BaseException as exc:
            self._handle_dbapi_exception(exc, None, None, None, None)
        return True


def _has_waiters(pool: Any) -> bool:
    """Is a caller queued for a connection of this pool? (the fair queues of ``_handoff``;
    their ``_waiters`` deque is read directly: the asyncio queue's ``waiting`` count walks it)"""
    return bool(getattr(getattr(pool, "_pool", None), "_waiters", None))


def _seconds(limit: Limit) -> float:
    return limit[0]


def _run_sql(conn: Any, sql: str) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def _ambiguous(state: EngineState, exc: BaseException) -> PoolguardError:
    c = state.backend.classify(exc)
    state.guard.stats.ambiguous(None, c.reason, exc, disposition=c.disposition.value)
    return sa_dropin(
        AmbiguousResultError,
        f"{state.name}: the COMMIT was sent but its reply was lost"
        f" ({c.reason}): the transaction may or may not have been"
        " applied",
        orig=exc,
        hint=state.backend.ambiguous_hint,
        invalidated=True,
    )


class GuardedOptionEngine(OptionEngine):
    """``engine.execution_options(...)`` copies keep the guarded Connection class."""

    _connection_cls = GuardedConnection


GuardedOptionEngine._option_cls = GuardedOptionEngine
