# WARNING: generated from poolguard/integrations/psycopg_pool/pool_async.py
# by tools/async_to_sync.py — edit the async source and run `make generate`.
"""``GuardedConnectionPool``: psycopg_pool's ``ConnectionPool`` with poolguard's rules.

It *is* a ``psycopg_pool.ConnectionPool`` (``with pool.connection() as conn:``,
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

import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from poolguard.backends import postgres as pg
from poolguard.core.retry import Attempts
from poolguard.errors import PoolguardError
from poolguard.integrations.psycopg_pool._errors import as_dropin
from poolguard.integrations.psycopg_pool._keepalive import KeepaliveMixin
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
from poolguard.integrations.psycopg_pool.connection import GuardedConnection, armed

__all__ = ["GuardedConnectionPool"]

T = TypeVar("T")
Fetch = Callable[[psycopg.Cursor[Any]], T]


class GuardedConnectionPool(
    # POOLGUARD_KEEPALIVE (_keepalive.py): registers at the first connect, unregisters at close().
    KeepaliveMixin,
    psycopg_pool.ConnectionPool[GuardedConnection],
):
    """A ``psycopg_pool.ConnectionPool`` built by
    :func:`poolguard.postgres.create_pool`."""

    def __init__(
        self,
        conninfo: str,
        *,
        rules: PoolRules,
        configure: Callable[[GuardedConnection], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._pg = rules
        self._pg_user_configure = configure
        rules.guard.stats.gauges = self._pg_gauges
        super().__init__(
            conninfo,
            connection_class=GuardedConnection,
            configure=self._pg_configure,
            check=self._pg_check,
            **kwargs,
        )

    # -- connecting -----------------------------------------------------------------------------
    def _connect(self, timeout: float | None = None) -> GuardedConnection:
        rules = self._pg
        started = time.monotonic()
        try:
            with pg.connect_deadline(rules.settings.connect_timeout):
                conn = super()._connect(timeout)
        except Exception as exc:
            rules.connect_failed(exc)
            raise
        rules.guard.stats.record_create(time.monotonic() - started)
        return conn

    def _pg_configure(self, conn: GuardedConnection) -> None:
        rules = self._pg
        rules.connected(conn)
        setup = rules.setup_sql()
        if setup is not None:
            conn.execute(setup)
            conn.commit()
        if self._pg_user_configure is not None:
            self._pg_user_configure(conn)

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # ``attempt``: None for a first try, else the Reconnect scheduled after a failure
        # (psycopg_pool only calls its delay/update_delay/time_to_give_up).
        if attempt is None:
            attempt = self._pg.reconnect_attempt(self.reconnect_timeout)
        super()._add_connection(attempt, growing)

    # -- checkout -------------------------------------------------------------------------------
    def getconn(self, timeout: float | None = None) -> GuardedConnection:
        """psycopg_pool's ``getconn`` bounded by the deadline, with a drop-in PoolTimeout."""
        return self._pg_acquire(timeout, breaker=True)

    def _pg_acquire(self, timeout: float | None, *, breaker: bool) -> GuardedConnection:
        rules = self._pg
        if breaker:
            rules.breaker_check()  # guarded helpers ask the breaker once, in the retry loop
        wait = rules.acquire_wait(timeout)
        started = time.monotonic()
        try:
            conn = super().getconn(wait)
        except psycopg_pool.PoolTimeout as exc:
            err = rules.pool_timeout(wait, self.get_stats())
            raise err from (rules.last_connect_error or exc)
        finally:
            rules.guard.stats.record_wait(time.monotonic() - started)
        rules.lent()
        if rules.guard.stats.sink is not None:
            rules.record_lent(conn)
        return conn

    def putconn(self, conn: GuardedConnection) -> None:
        rules = self._pg
        rules.given_back()
        if rules.guard.stats.sink is not None:
            rules.record_use(conn)
        super().putconn(conn)

    def _getconn_with_check_loop(self, deadline: float) -> GuardedConnection:
        # psycopg_pool sleeps 1 s, 2 s, 4 s... after a failed check. A failed validation only
        # means that connection was stale: discard it and take the next at once. The loop is
        # bounded: each failure removes a connection, and fresh connections are not pinged.
        while True:
            conn = self._getconn_unchecked(deadline - time.monotonic())
            try:
                self._check_connection(conn)
            except Exception as exc:
                self._putconn(conn, from_getconn=True)
                if is_deadline_spent(exc):
                    raise psycopg_pool.PoolTimeout() from None
            except BaseException:
                self._putconn(conn, from_getconn=True)
                raise
            else:
                return conn

    def _pg_check(self, conn: GuardedConnection) -> None:
        """The ``check=`` callback: ping only when idle past ``validate_idle`` (or suspect)."""
        rules = self._pg
        seconds = rules.checkout(conn)
        if seconds is None:
            return
        rules.guard.stats.incr("validations")
        try:
            with armed(conn, seconds):
                self.check_connection(conn)
            if pg.wrong_role(conn):
                # Alive, but a failover made its server read-only (or a standby) while the
                # URL's target_session_attrs asks otherwise: a ping alone would keep it.
                raise psycopg.OperationalError("the server changed role (failover)")
        except Exception as exc:
            rules.validation_failed(conn, exc)
            raise

    # -- return ---------------------------------------------------------------------------------
    def _return_connection(self, conn: GuardedConnection, from_getconn: bool) -> None:
        if not from_getconn:
            conn._pg_returned = time.monotonic()
        super()._return_connection(conn, from_getconn)

    def _reset_connection(self, conn: GuardedConnection) -> None:
        if PoolRules.usable(conn):
            super()._reset_connection(conn)  # IDLE: nothing to roll back
        else:
            # The ROLLBACK of a returned connection is bounded even when the caller's deadline
            # is spent (it must run to keep the connection).
            conn._pg_mode = CLEANUP
            try:
                super()._reset_connection(conn)
            finally:
                conn._pg_mode = NORMAL
        if conn._pg_isolation and PoolRules.usable(conn):
            # transaction(isolation_level=...) must not leak to the next user; no round trip:
            # psycopg applies the level at the next BEGIN.
            conn.set_isolation_level(None)
            conn._pg_isolation = False

    # -- guarded helpers ------------------------------------------------------------------------
    def execute(self, query: Any, params: Any = None, *, idempotent: bool | None = None) -> int:
        """Run one statement in autocommit; return its rowcount. Retried when safe."""
        return self._pg_statement(query, params, idempotent, _rowcount)

    def fetchall(
        self, query: Any, params: Any = None, *, idempotent: bool | None = None
    ) -> list[Any]:
        return self._pg_statement(query, params, idempotent, _fetchall)

    def fetchone(self, query: Any, params: Any = None, *, idempotent: bool | None = None) -> Any:
        return self._pg_statement(query, params, idempotent, _fetchone)

    def fetchval(self, query: Any, params: Any = None, *, idempotent: bool | None = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        return self._pg_statement(query, params, idempotent, _fetchval)

    def _pg_statement(self, query: Any, params: Any, idempotent: bool | None, fetch: Fetch[T]) -> T:
        rules = self._pg
        op = rules.statement_op(query, idempotent)

        def attempt(_attempts: Attempts) -> T:
            conn = self._pg_acquire(None, breaker=False)
            try:
                return self._pg_run(conn, query, params, fetch)
            finally:
                self.putconn(conn)

        try:
            return rules.guard.run_with(attempt, op)
        except PoolguardError as exc:
            err = as_dropin(exc)
            if err is exc:
                raise
            raise err from exc.__cause__ or exc

    def _pg_run(self, conn: GuardedConnection, query: Any, params: Any, fetch: Fetch[T]) -> T:
        """One statement under one backstop: autocommit, or a transaction under PgBouncer."""
        rules = self._pg
        armed = rules.arm(conn)
        conn._pg_mode = ARMED
        try:
            local = rules.local_sql()
            if local is None:
                conn.set_autocommit(True)
                try:
                    result = fetch(conn.execute(query, params))
                finally:
                    _restore_autocommit(conn)
            else:
                conn.execute(local)
                result = fetch(conn.execute(query, params))
                conn.commit()
        except Exception as exc:
            err = rules.failed(conn, armed, exc, observe=False)
            if err is exc:
                raise
            raise err from exc
        finally:
            conn._pg_mode = NORMAL
        rules.succeeded(conn, armed)
        return result

    def transaction(
        self,
        fn: Callable[[GuardedConnection], T],
        *,
        retry_on: Collection[str] = DEFAULT_RETRY_SQLSTATES,
        attempts: int | None = None,
        isolation_level: psycopg.IsolationLevel | None = None,
        resolve_ambiguous: bool = False,
    ) -> T:
        """Run ``fn(conn)`` in one transaction and commit; re-run the whole unit on a fresh
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

        def attempt(a: Attempts) -> T:
            a.op = UNIT_OF_WORK
            conn = self._pg_acquire(None, breaker=False)
            try:
                return self._pg_unit(conn, fn, a, isolation_level, resolve_ambiguous)
            finally:
                self.putconn(conn)

        try:
            return guard.run_with(attempt, UNIT_OF_WORK)
        except PoolguardError as exc:
            err = as_dropin(exc)
            if err is exc:
                raise
            raise err from exc.__cause__ or exc

    def _pg_unit(
        self,
        conn: GuardedConnection,
        fn: Callable[[GuardedConnection], T],
        a: Attempts,
        isolation_level: psycopg.IsolationLevel | None,
        resolve: bool,
    ) -> T:
        rules = self._pg
        rules.begin_unit(conn)
        if isolation_level is not None:
            conn._pg_isolation = True  # restored on return, after the pool's rollback
            conn.set_isolation_level(isolation_level)
        try:
            local = rules.local_sql()
            if local is not None:
                conn.execute(local)
            # Recorded first, so the marker exists whatever the unit does before COMMIT.
            marker = conn.execute(XID_SQL).fetchone() if resolve else None
            result = fn(conn)
            a.op = COMMIT_OF_UNIT
            began = not rules.usable(conn)  # libpq: a transaction is open, COMMIT has work
            try:
                conn.commit()
            except Exception as exc:
                if marker is not None and rules.outcome_unknown(began, exc):
                    outcome = self._pg_resolve(marker)
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

    def _pg_resolve(self, marker: Any) -> bool | None:
        """The lost COMMIT's fate, asked on another connection; None when unknowable."""
        xid, pid, timeline = marker
        stop = time.monotonic() + RESOLVE_TIMEOUT
        try:
            while time.monotonic() < stop:
                status, now_on = self.fetchone(STATUS_SQL, (xid,), idempotent=True)
                if now_on != timeline:  # a failover in between: the xid may be another's
                    self._pg.guard.stats.incr("ambiguous_unresolved.timeline")
                    return None
                found = self._pg.resolved(status)
                if found is not None:
                    return found
                # "in progress": the COMMIT never arrived and the old backend still holds the
                # transaction open; ending that backend aborts it.
                self.execute(TERMINATE_SQL, (pid,), idempotent=True)
                time.sleep(RESOLVE_POLL)
        except Exception:
            return None  # stay ambiguous; the check's own failure is not the caller's news
        return None

    # -- observability --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """poolguard's snapshot (counters, waits, breaker) with psycopg_pool's gauges."""
        return self._pg.guard.stats.snapshot()

    def _pg_gauges(self) -> dict[str, Any]:
        return self._pg.gauges(self.get_stats())


def _restore_autocommit(conn: GuardedConnection) -> None:
    """Back to psycopg's default for the next user of the connection, or close it."""
    if PoolRules.usable(conn):
        conn.set_autocommit(False)
    else:
        conn.pgconn.finish()  # mid-query (a fetch failed): unusable; the pool replaces it


def _rowcount(cur: psycopg.Cursor[Any]) -> int:
    return cur.rowcount


def _fetchall(cur: psycopg.Cursor[Any]) -> list[Any]:
    return cur.fetchall()


def _fetchone(cur: psycopg.Cursor[Any]) -> Any:
    return cur.fetchone()


def _fetchval(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    if row is None:
        return None
    return row[0] if isinstance(row, tuple) else next(iter(row.values()))
