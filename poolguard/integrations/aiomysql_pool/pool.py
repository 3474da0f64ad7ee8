"""``GuardedPool``: a pool of aiomysql connections with poolguard's rules, aiomysql's pool API.

Why not a subclass of ``aiomysql.Pool``: what poolguard must change is the core of it, and
aiomysql's structure is what causes the problems (read from aiomysql 0.2/0.3 ``pool.py``):

- connects run inside ``_fill_free_pool`` *while holding the pool's Condition*, through the
  module-level ``connect`` (no hook to bound the handshake, set up timeouts or count them): one
  connect to a frozen server blocks every caller, even one a released connection could serve;
- ``release()`` of a closed connection, or of one inside a transaction (which it closes), frees
  a slot but wakes no waiter: a caller waiting at ``maxsize`` sleeps until some other release;
- ``get_transaction_status()`` reads only ``SERVER_STATUS_IN_TRANS``: a connection with
  autocommit off that only read keeps its snapshot (MariaDB sets no flag for it) and the next
  user reads stale data;
- no acquire timeout, ``pool_recycle`` is "idle since last use", no validation.

Overriding ``_acquire``, ``_fill_free_pool`` and ``release`` would replace all of its logic
while inheriting its private fields. So this pool owns the slots and the FIFO hand-off (a
released connection goes straight to the oldest waiter) and reuses what aiomysql does well: its
``Connection`` (protocol, the ``_StreamReader`` whose EOF tells at checkout, for free, that the
server closed an idle connection: aiomysql's own free-list check), its acquire context manager,
and its public pool API (``acquire()``, ``release()``, ``close()``/``wait_closed()``,
``terminate()``, ``clear()``, ``size``/``freesize``/``minsize``/``maxsize``, ``async with``),
so code written for ``aiomysql.create_pool`` keeps working.

What it adds: acquire timeout (``PoolTimeout``, also ``pymysql.err.OperationalError``), a
handshake bounded by ``connect_timeout``, checkout ping only past ``validate_idle`` (or when
suspect after a disconnect), jittered lifetime and ``max_idle`` at checkout, a deferred
ROLLBACK on return (``backends/mysql.py``), the client backstop on every request of a lent
connection (:class:`GuardedConnection`), guarded helpers (``execute``/``fetch*`` retried under
the retry-safety rule; ``transaction``/``run_transaction`` re-running whole units on 1213/1205
and disconnects before COMMIT), breaker, budget, stats, keepalive and fork refusal. Decisions
are ``_rules.py``; public entry point :mod:`poolguard.mysql`.

No sync twin generated from this module: PyMySQL has no pool for a generated sync class to be
built on, and this module's waiting is asyncio futures (``tools/async_to_sync.py`` maps asyncio
names to threading ones only where the semantics match). Sync MySQL users have
:func:`poolguard.create_engine` (SQLAlchemy's QueuePool + PyMySQL, same rules).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import aiomysql
import pymysql
from aiomysql.utils import _PoolAcquireContextManager

from poolguard.backends import mysql as my
from poolguard.core import keepalive
from poolguard.core.deadline import _deadline
from poolguard.core.disposition import Action, decide
from poolguard.core.retry import Attempts
from poolguard.errors import AmbiguousResultError, PoolguardError, QueryTimeout
from poolguard.integrations.aiomysql_pool._rules import (
    ARMED,
    COMMIT_OF_UNIT,
    DEFAULT_RETRY_ERRNOS,
    NORMAL,
    UNIT_OF_WORK,
    VALIDATE_TIMEOUT,
    DeadlineSpent,
    Evicted,
    MyRules,
    as_dropin,
    classify,
    my_dropin,
)

__all__ = ["GuardedConnection", "GuardedPool"]

T = TypeVar("T")
Fetch = Callable[[Any], Awaitable[T]]

#: CR_CONN_HOST_ERROR: a handshake that failed or timed out is a failed *connect*.
_CONNECT_FAILED = 2003
_LOST = 2013


class GuardedConnection(aiomysql.Connection):  # type: ignore[misc]
    """An aiomysql ``Connection`` whose requests run under poolguard's backstop while it
    belongs to a pool: ``min(query_timeout + grace, deadline, transaction timeout)`` per
    ``query`` / ``begin`` / ``commit`` / ``rollback`` (a cut socket fails the read at once; the
    connection is discarded). Rows read later by an unbuffered cursor are not bounded."""

    _my_rules: MyRules | None = None
    _my_mode: int = NORMAL
    _my_created: float = 0.0
    _my_expires: float = float("inf")
    _my_returned: float | None = None
    _my_txn_end: float | None = None
    _my_pinged: float = 0.0

    async def query(self, sql: Any, unbuffered: bool = False) -> int:
        return await self._my_bounded(super().query, sql, unbuffered)  # type: ignore[no-any-return]

    async def begin(self) -> None:
        await self._my_bounded(super().begin)

    async def commit(self) -> None:
        await self._my_bounded(super().commit)

    async def rollback(self) -> None:
        await self._my_bounded(super().rollback)

    async def _my_bounded(self, call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        rules = self._my_rules
        mode = self._my_mode
        if (
            rules is None
            or mode == ARMED
            or (
                mode == NORMAL
                and rules.query_limit is None
                and self._my_txn_end is None
                and _deadline.get() is None
            )
        ):
            try:
                return await call(*args)
            except Exception as exc:
                if rules is not None:
                    rules.failed(self, None, exc)
                raise
        armed = rules.arm(self)
        try:
            result = await call(*args)
        except Exception as exc:
            err = rules.failed(self, armed, exc)
            if err is exc:
                raise
            raise err from exc
        rules.succeeded(self, armed)
        return result


class GuardedPool:
    """A pool of :class:`GuardedConnection` made by :func:`poolguard.mysql.create_async_pool`."""

    def __init__(
        self, rules: MyRules, *, minsize: int, maxsize: int, conn_kwargs: dict[str, Any]
    ) -> None:
        if minsize < 0 or maxsize < max(minsize, 1):
            raise ValueError("need 0 <= minsize <= maxsize and maxsize >= 1")
        self._my = rules
        self._minsize = minsize
        self._maxsize = maxsize
        self._conn_kwargs = conn_kwargs
        self._pool: collections.deque[GuardedConnection] = collections.deque()  # idle, FIFO
        self._used: set[GuardedConnection] = set()  # lent, or being checked / handed over
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[GuardedConnection | None]] = (
            collections.deque()
        )
        self._closing = False
        self._closed = False
        self._opened_in = 0  # pid that made a connection (fork refusal)
        self._ka_watched = False
        rules.guard.stats.gauges = self._gauges
        _pools.add(self)

    # -- aiomysql's pool API --------------------------------------------------------------------
    @property
    def minsize(self) -> int:
        return self._minsize

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def size(self) -> int:
        return len(self._pool) + len(self._used) + self._connecting

    @property
    def freesize(self) -> int:
        return len(self._pool)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def name(self) -> str:
        return self._my.name

    def acquire(self, timeout: float | None = None) -> Any:
        """``async with pool.acquire() as conn:`` or ``conn = await pool.acquire()`` (then
        ``pool.release(conn)``). Waits ``min(timeout or acquire_timeout, deadline)``."""
        return _PoolAcquireContextManager(self._acquire(timeout, breaker=True), self)

    def release(self, conn: GuardedConnection) -> asyncio.Future[None]:
        """Give ``conn`` back (not a coroutine, like aiomysql's; the result may be awaited)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        if conn not in self._used:
            return done  # released twice, or forgotten by terminate()
        self._my.given_back()
        conn._my_txn_end = None
        conn._my_mode = NORMAL
        if not self._closing and _reset(conn):
            conn._my_returned = time.monotonic()
            self._put_idle(conn)
        else:
            conn.close()
            self._used.discard(conn)
            self._slot_freed()
        return done

    async def open(self) -> None:
        """Open ``minsize`` connections now; the first failure raises (fail fast)."""
        while self.size < self._minsize:
            conn = await self._open_one(self._my.settings.connect_timeout, breaker=True)
            self._used.discard(conn)
            self._pool.append(conn)

    def close(self) -> None:
        """No more checkouts; idle connections close now, lent ones when released."""
        if self._closed:
            return
        self._closing = True
        keepalive.unwatch(self)
        while self._pool:
            self._pool.popleft().close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the pool was closed"))
        self._waiters.clear()

    def terminate(self) -> None:
        """Close the pool and every connection, lent ones included."""
        self.close()
        for conn in list(self._used):
            conn.close()
        self._used.clear()

    async def wait_closed(self) -> None:
        """After :meth:`close`: wait until every lent connection was released."""
        if not self._closing:
            raise RuntimeError(".wait_closed() should be called after .close()")
        # release() is not a coroutine (aiomysql's API): poll, at shutdown only.
        while self._used or self._connecting:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._closed = True

    async def clear(self) -> None:
        """Close every idle connection."""
        while self._pool:
            await self._pool.popleft().ensure_closed()
        self._slot_freed()

    async def __aenter__(self) -> GuardedPool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- checkout -------------------------------------------------------------------------------
    async def _acquire(self, timeout: float | None, *, breaker: bool) -> GuardedConnection:
        rules = self._my
        if self._closing:
            raise RuntimeError("Cannot acquire connection after closing pool")
        if breaker:
            rules.breaker_check()  # the guarded helpers ask the breaker once, in their loop
        wait = rules.acquire_wait(timeout)
        started = time.monotonic()
        failures = 0
        try:
            while True:
                try:
                    conn = await self._getconn_unchecked(wait, started, breaker)
                    break
                except pymysql.err.OperationalError as exc:
                    # A caller of acquire() (the helpers have their retry loop): a failed
                    # connect sent nothing, so keep trying within the acquire wait, as
                    # psycopg_pool's getconn waits for its reconnects.
                    failures += 1
                    delay = (
                        None if not breaker else rules.reconnect_delay(exc, failures, wait, started)
                    )
                    if delay is None:
                        raise
                await asyncio.sleep(delay)
        finally:
            rules.guard.stats.record_wait(time.monotonic() - started)
        rules.lent()
        return conn

    async def _getconn_unchecked(
        self, wait: float | None, started: float, breaker: bool
    ) -> GuardedConnection:
        """A checked connection: an idle one, a new one if a slot is free, else the next one
        released (FIFO). (Named like psycopg_pool's lowest checkout step: a fork replaces it.)"""
        handed: GuardedConnection | None = None
        while True:
            if handed is None and self._pool:
                handed = self._pool.popleft()
                self._used.add(handed)
            if handed is not None:
                conn, handed = handed, None
                try:
                    ok = await self._check(conn, wait, started)
                except asyncio.CancelledError:
                    # Cancelled mid-ping or mid-ROLLBACK read: the connection is half-read;
                    # discard it, and give its slot back (nobody else will).
                    self._discarded(conn)
                    self._slot_freed()
                    raise
                if ok:
                    return conn
                continue
            left = None if wait is None else wait - (time.monotonic() - started)
            if left is not None and left <= 0:
                raise self._timeout(wait or 0.0)
            if self.size < self._maxsize:
                bound = _min(self._my.settings.connect_timeout, left)
                return await self._open_one(bound, breaker=breaker)
            handed = await self._wait_for_release(left, wait)

    async def _wait_for_release(
        self, left: float | None, wait: float | None
    ) -> GuardedConnection | None:
        """Wait for a released connection (handed over in ``_used``) or a freed slot (None)."""
        waiter: asyncio.Future[GuardedConnection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, left)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()  # handed over just as we gave up: pass it on
                if got is not None:
                    self._put_idle(got)
                else:
                    self._slot_freed()
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.TimeoutError):
                raise self._timeout(wait or 0.0) from None
            raise

    def _timeout(self, waited: float) -> PoolguardError:
        return self._my.pool_timeout(
            waited, self.size, self._maxsize, len(self._pool), len(self._waiters)
        )

    async def _check(self, conn: GuardedConnection, wait: float | None, started: float) -> bool:
        """Settle a deferred ROLLBACK, evict by age/idle, ping past ``validate_idle``."""
        rules = self._my
        try:
            if my.rollback_pending(conn):
                await self._settle(conn)
                return True  # the ROLLBACK's reply proved the connection alive
            seconds = rules.checkout(conn)
        except Evicted:
            self._discarded(conn)
            return False
        except DeadlineSpent:
            self._put_idle(conn)
            raise self._timeout(time.monotonic() - started) from None
        except Exception as exc:
            rules.validation_failed(conn, exc)
            self._discarded(conn)
            return False
        if seconds is None:
            return True
        rules.guard.stats.incr("validations")
        try:
            await self._ping(conn, seconds)
        except Exception as exc:
            rules.validation_failed(conn, exc)
            self._discarded(conn)
            return False
        return True

    async def _settle(self, conn: GuardedConnection) -> None:
        """Read the OK packet of the ROLLBACK sent at release (usually already buffered)."""
        if my.rollback_reply_ready(conn):
            await my.read_rollback_reply_async(conn)
            return
        bound = VALIDATE_TIMEOUT
        at = _deadline.get()
        if at is not None:
            bound = min(bound, at - time.monotonic())
        # aiomysql closes a connection whose read is cancelled: nothing half-read is reused.
        await asyncio.wait_for(my.read_rollback_reply_async(conn), max(bound, 0.0))

    async def _ping(self, conn: GuardedConnection, seconds: float) -> None:
        armed = self._my.arm(conn, (seconds, QueryTimeout, "validation timeout"))
        conn._my_mode = ARMED
        try:
            await conn.ping(reconnect=False)
        except Exception as exc:
            raise self._my.failed(conn, armed, exc) from exc
        finally:
            conn._my_mode = NORMAL
        self._my.succeeded(conn, armed)

    def _discarded(self, conn: GuardedConnection) -> None:
        """A connection taken for checkout was closed: its slot is ours to reuse."""
        conn.close()
        self._used.discard(conn)

    # -- slots ----------------------------------------------------------------------------------
    def _put_idle(self, conn: GuardedConnection) -> None:
        """``conn`` (in ``_used``) to the oldest waiter, else to the idle deque."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # stays in _used: the waiter holds it now
                return
        self._used.discard(conn)
        self._pool.append(conn)

    def _slot_freed(self) -> None:
        """A slot became free: the oldest waiter may open a connection in it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _open_one(self, bound: float | None, *, breaker: bool) -> GuardedConnection:
        rules = self._my
        self._connecting += 1
        started = time.monotonic()
        try:
            conn = await self._connect(bound)
        except BaseException as exc:
            self._connecting -= 1
            self._slot_freed()
            if isinstance(exc, Exception):
                rules.connect_failed(exc, breaker=breaker)
            raise
        self._connecting -= 1
        rules.guard.stats.record_create(time.monotonic() - started)
        rules.connected(conn)
        self._opened_in = os.getpid()
        if self._closing:
            conn.close()
            raise RuntimeError("the pool was closed while connecting")
        self._used.add(conn)
        if not self._ka_watched and self.keepalive_interval() is not None:
            self._ka_watched = True
            keepalive.watch(self, asyncio.get_running_loop())
        return conn

    async def _connect(self, bound: float | None) -> GuardedConnection:
        """aiomysql's connect with the handshake and the session setup under ``bound``
        (aiomysql's ``connect_timeout`` covers only the TCP connect)."""
        rules = self._my
        conn = GuardedConnection(**self._conn_kwargs)

        async def open_() -> None:
            await conn._connect()
            rules.server_version = str(conn.get_server_info())
            setup = rules.setup_sql()
            if setup is not None:
                await conn.query(setup)  # not yet the pool's: unbounded but for ``bound``

        try:
            await asyncio.wait_for(open_(), bound)
        except asyncio.TimeoutError:
            conn.close()
            raise pymysql.err.OperationalError(
                _CONNECT_FAILED, f"Can't connect to MySQL server (timed out after {bound:.2f}s)"
            ) from None
        except pymysql.err.OperationalError as exc:
            conn.close()
            if exc.args and exc.args[0] == _LOST:
                raise pymysql.err.OperationalError(
                    _CONNECT_FAILED, "Can't connect to MySQL server (lost during the handshake)"
                ) from exc
            raise
        except BaseException:
            conn.close()
            raise
        if rules.settings.tcp_keepalive:
            sock = my.raw_socket(conn)
            if sock is not None:
                my.set_keepalive(sock, rules.settings.tcp_keepalive)
        return conn

    # -- guarded helpers ------------------------------------------------------------------------
    async def execute(self, query: Any, args: Any = None, *, idempotent: bool | None = None) -> int:
        """Run one statement in autocommit; return its rowcount. Retried when safe: before
        it could reach the server, or when it is a read / ``idempotent=True``."""
        return await self._statement(query, args, idempotent, _rowcount)

    async def fetchall(
        self, query: Any, args: Any = None, *, idempotent: bool | None = None
    ) -> list[Any]:
        return await self._statement(query, args, idempotent, _fetchall)

    async def fetchone(
        self, query: Any, args: Any = None, *, idempotent: bool | None = None
    ) -> Any:
        return await self._statement(query, args, idempotent, _fetchone)

    async def fetchval(
        self, query: Any, args: Any = None, *, idempotent: bool | None = None
    ) -> Any:
        """The first column of the first row (None when there is no row)."""
        return await self._statement(query, args, idempotent, _fetchval)

    async def _statement(
        self, query: Any, args: Any, idempotent: bool | None, fetch: Fetch[T]
    ) -> T:
        rules = self._my
        op = rules.statement_op(query, idempotent)

        async def attempt(_attempts: Attempts) -> T:
            conn = await self._acquire(None, breaker=False)
            try:
                return await self._run(conn, query, args, fetch)
            finally:
                self.release(conn)

        return await _dropin_errors(rules.guard.arun_with(attempt, op))

    async def _run(self, conn: GuardedConnection, query: Any, args: Any, fetch: Fetch[T]) -> T:
        """One statement in autocommit under one backstop."""
        rules = self._my
        armed = rules.arm(conn)
        conn._my_mode = ARMED
        try:
            manual = not conn.get_autocommit()
            if manual:
                await conn.autocommit(True)
            cur = await conn.cursor()
            await cur.execute(query, args)
            result = await fetch(cur)
            if manual:
                await conn.autocommit(False)
        except Exception as exc:
            err = rules.failed(conn, armed, exc)
            if err is exc:
                raise
            raise err from exc
        finally:
            conn._my_mode = NORMAL
        rules.succeeded(conn, armed)
        return result

    def transaction(
        self,
        fn: Callable[[GuardedConnection], Awaitable[T]] | None = None,
        *,
        retry_on: Collection[int] = DEFAULT_RETRY_ERRNOS,
        attempts: int | None = None,
    ) -> Any:
        """``await pool.transaction(fn)``: :meth:`run_transaction`. ``async with
        pool.transaction() as conn:``: one attempt (BEGIN; COMMIT on success, ROLLBACK on an
        exception; a lost COMMIT reply raises AmbiguousResultError), never re-run."""
        if fn is None:
            return _Transaction(self)
        return self.run_transaction(fn, retry_on=retry_on, attempts=attempts)

    async def run_transaction(
        self,
        fn: Callable[[GuardedConnection], Awaitable[T]],
        *,
        retry_on: Collection[int] = DEFAULT_RETRY_ERRNOS,
        attempts: int | None = None,
    ) -> T:
        """Run ``await fn(conn)`` in one transaction and commit; re-run the whole unit on a
        fresh connection when the server rolled it back (1213 deadlock, 1205 lock wait
        timeout) or the connection died before COMMIT was sent. A lost COMMIT reply raises
        AmbiguousResultError (never re-run). ``fn`` may run more than once."""
        rules = self._my
        guard = rules.unit_guard(retry_on, attempts)

        async def attempt(a: Attempts) -> T:
            a.op = UNIT_OF_WORK
            conn = await self._acquire(None, breaker=False)
            try:
                return await self._unit(conn, fn, a)
            finally:
                self.release(conn)

        return await _dropin_errors(guard.arun_with(attempt, UNIT_OF_WORK))

    async def _unit(
        self,
        conn: GuardedConnection,
        fn: Callable[[GuardedConnection], Awaitable[T]],
        a: Attempts,
    ) -> T:
        rules = self._my
        rules.begin_unit(conn)
        await conn.begin()
        result = await fn(conn)
        a.op = COMMIT_OF_UNIT
        try:
            await conn.commit()
        except Exception as exc:
            err = rules.commit_failed(exc)
            if err is exc:
                raise
            raise err from exc
        return result

    # -- keepalive (POOLGUARD_KEEPALIVE, core/keepalive.py) -------------------------------------
    def keepalive_interval(self) -> float | None:
        interval: float | None = self._my.settings.keepalive
        return interval

    def keepalive_sweep(self, now: float) -> float | None:  # pragma: no cover - asyncio only
        raise RuntimeError("an asyncio pool is swept on its loop (akeepalive_sweep)")

    async def akeepalive_sweep(self, now: float) -> float | None:
        """Ping each connection idle longer than the interval, one at a time; its slot stays
        lent meanwhile (a caller arriving opens a connection instead of waiting for it)."""
        interval = self.keepalive_interval()
        if interval is None or self._closing:
            return None
        for conn in [c for c in self._pool if _ka_due(c, time.monotonic(), interval)]:
            if conn not in self._pool:
                continue
            self._pool.remove(conn)
            self._used.add(conn)
            self._my.guard.stats.incr("keepalive_pings")
            try:
                await self._ping(conn, VALIDATE_TIMEOUT)
            except Exception as exc:
                self._my.guard.stats.incr("keepalive_failures")
                self._my.guard.stats.evict("keepalive", time.monotonic() - conn._my_created)
                self._discarded(conn)
                self._my.observe(exc)
                self._slot_freed()
                continue
            conn._my_pinged = time.monotonic()
            if self._closing:
                self._discarded(conn)
            else:
                self._put_idle(conn)
        return min((_ka_last(c) + interval for c in self._pool), default=None)

    # -- observability --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """poolguard's snapshot (counters, waits, breaker, gauges)."""
        return self._my.guard.stats.snapshot()

    def _gauges(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "idle": len(self._pool),
            "checked_out": self._my.checked_out,
            "waiting": sum(1 for w in self._waiters if not w.done()),
            "max": self._maxsize,
            "idle_min": self._minsize,
        }

    def __repr__(self) -> str:
        return (
            f"<GuardedPool {self.name} {self._my.redacted_url} size={self.size}/{self._maxsize}"
            f" idle={len(self._pool)}>"
        )


class _Transaction:
    """``async with pool.transaction() as conn``: one unit, one attempt."""

    def __init__(self, pool: GuardedPool) -> None:
        self._pool = pool
        self._conn: GuardedConnection | None = None

    async def __aenter__(self) -> GuardedConnection:
        pool = self._pool
        conn = await pool._acquire(None, breaker=True)
        try:
            pool._my.begin_unit(conn)
            await conn.begin()
        except BaseException:
            pool.release(conn)
            raise
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        pool, conn = self._pool, self._conn
        assert conn is not None
        self._conn = None
        try:
            if exc_type is None:
                await _commit_once(pool, conn)
        finally:
            pool.release(conn)  # an open transaction is rolled back (deferred ROLLBACK)


async def _commit_once(pool: GuardedPool, conn: GuardedConnection) -> None:
    rules = pool._my
    try:
        await conn.commit()
    except Exception as exc:
        err = rules.commit_failed(exc)
        if err is not exc:
            raise err from exc
        c = classify(exc)
        if decide(c, COMMIT_OF_UNIT) is Action.AMBIGUOUS:
            rules.guard.stats.ambiguous(None, c.reason, exc, disposition=c.disposition.value)
            raise my_dropin(
                AmbiguousResultError,
                f"{rules.name}: the COMMIT was sent but its reply was lost ({c.reason}): the"
                " transaction may or may not have been applied",
                hint="check on the server before re-running it, or make the unit idempotent",
            ) from exc
        raise


def _reset(conn: GuardedConnection) -> bool:
    """Make ``conn`` clean for its next user without waiting; False: discard it."""
    if conn.closed:
        return False
    reset = my.needs_reset(conn)
    if reset is None:
        return False  # mid-result or closed: unusable
    if not reset:
        return True
    if not my.rollback_deferrable(conn):
        return False
    try:
        my.send_rollback(conn)  # its reply is read at the next checkout
    except Exception:
        return False
    return True


async def _dropin_errors(call: Awaitable[T]) -> T:
    try:
        return await call
    except PoolguardError as exc:
        err = as_dropin(exc)
        if err is exc:
            raise
        raise err from exc.__cause__ or exc


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _ka_last(conn: GuardedConnection) -> float:
    used = conn._my_returned if conn._my_returned is not None else conn._my_created
    return max(used, conn._my_pinged)


def _ka_due(conn: GuardedConnection, now: float, interval: float) -> bool:
    return now - _ka_last(conn) >= interval and now < conn._my_expires


async def _rowcount(cur: Any) -> int:
    return int(cur.rowcount)


async def _fetchall(cur: Any) -> list[Any]:
    return list(await cur.fetchall())


async def _fetchone(cur: Any) -> Any:
    return await cur.fetchone()


async def _fetchval(cur: Any) -> Any:
    row = await cur.fetchone()
    if row is None:
        return None
    return row[0] if isinstance(row, (tuple, list)) else next(iter(row.values()))


# -- fork: a pool that had connections refuses checkouts in a forked child --------------------

_pools: weakref.WeakSet[GuardedPool] = weakref.WeakSet()
_forgotten: list[GuardedConnection] = []


def _refuse_in_child() -> None:
    from poolguard.integrations._fork import FORKED_POOL_MESSAGE

    for pool in list(_pools):
        if not pool._opened_in or pool._closing:
            continue  # no connection yet: the child opens its own

        async def refuse(*_args: Any, _pool: GuardedPool = pool, **_kwargs: Any) -> Any:
            raise my_dropin(
                PoolguardError,
                FORKED_POOL_MESSAGE.format(name=_pool.name),
                hint="create the pool in each worker (gunicorn: post_fork), or after the fork;"
                " see docs/mysql-native.md",
            )

        pool._getconn_unchecked = refuse  # type: ignore[method-assign]
        # Forget the parent's connections, but keep them referenced for good: a collected
        # aiomysql connection closes its transport, and the event loop then unregisters the
        # socket from the epoll instance the child shares with the parent, so the parent never
        # hears from that connection again (measured: the parent's next query hung).
        _forgotten.extend(pool._pool)
        _forgotten.extend(pool._used)
        pool._pool.clear()
        pool._used.clear()
        pool._ka_watched = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refuse_in_child)
