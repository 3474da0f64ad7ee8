"""The guarded SQLAlchemy pool: acquire timeout, connect retries, validation, eviction, stats.

:class:`GuardedQueuePool` (sync) and :class:`GuardedAsyncQueuePool` (asyncio) are SQLAlchemy's
own QueuePools with these changes, each small:

- the queue is fair (``_queue_class``: :class:`~._handoff.FairQueue` /
  :class:`~._handoff.AsyncFairQueue`): a returned connection goes straight to the longest
  waiter, never back to the thread or task that returned it (SQLAlchemy's queues let it barge:
  32 threads on 8 connections, slowest call 2 s there, 31 ms here); capacity freed without a
  return (a failed connect: ``_dec_overflow``; ``dispose()``) goes to the longest waiter as a
  slot to connect with, where SQLAlchemy woke no one. The capacity counters (``_overflow``,
  ``_max_overflow``) live in the queue, under its lock, so "no room: wait" and "room freed:
  wake" cannot interleave;
- ``connect()`` (checkout) runs under the core retry loop as a *before-send* operation: a
  refused connection, a connect timeout or "the database system is starting up" is retried with
  backoff within the deadline, and counts towards the circuit breaker. The loop is only built
  once the first attempt failed (``Guard.first_attempt`` / ``resume_with``): a checkout that
  succeeds costs one admission check;
- ``_do_get()`` waits ``min(acquire_timeout, deadline)`` in that queue (FIFO) and raises a
  :class:`PoolTimeout` that is also ``sqlalchemy.exc.TimeoutError`` and states the pool's
  numbers; it then applies the checkout rules (lifetime, idle time, validation:
  :func:`_vetted`) to the record it hands out;
- ``_return_conn()`` applies the checkin rules (lifetime also enforced on return);
- ``_invalidate()`` (SQLAlchemy calls it on every disconnect) no longer drops *every* older
  connection: a POOL-scope error (server restart, failover) marks them suspect, so they are
  validated at their next checkout; a CONNECTION-scope error condemns that connection only;
- ``stats()``.

Any other pool class (``poolclass=NullPool``, ``StaticPool``, ``SingletonThreadPool``,
``AssertionPool``, a user's own, or a ``pool=`` instance) gets the same connect retries,
invalidation rules and checkout/checkin rules through :func:`guarded_class` /
:func:`guard_instance`, around that class's own ``_do_get``; only the acquire timeout and its
``PoolTimeout`` belong to the queue pools (see docs/postgres.md "Other pool classes").

poolguard's per-connection bookkeeping (birth, last return, lifetime, fresh) lives in a private
attribute of SQLAlchemy's pool record, not in ``record.info``: that dictionary is the user's
(``Connection.info`` *is* it).

The checkout and checkin rules were ``checkout`` / ``checkin`` listeners (the hook SQLAlchemy
documents for pessimistic checkout handling); as pool methods they cost no event dispatch and
keep SQLAlchemy's checkout on its fast path, with the same outcome: a connection that fails is
invalidated and reconnected in place. ``connect`` (session setup) and ``reset`` (ROLLBACK on
return only when libpq / the server status says a transaction is open) remain listeners
(:func:`install_pool_events`).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Literal

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util import queue as sqla_queue

from poolguard.core.deadline import current_deadline, effective_timeout
from poolguard.core.disposition import Operation, Scope
from poolguard.errors import ConnectTimeout, PoolguardError, PoolTimeout
from poolguard.integrations.backstop import backstop
from poolguard.integrations.sqlalchemy._errors import as_dropin, sa_dropin
from poolguard.integrations.sqlalchemy._first_connect import bound_dialect_initialize
from poolguard.integrations.sqlalchemy._handoff import CREATE, AsyncFairQueue, FairQueue
from poolguard.integrations.sqlalchemy._keepalive import KeepaliveMixin
from poolguard.integrations.sqlalchemy._state import (
    VALIDATE_TIMEOUT,
    EngineState,
    in_statement_loop,
)

__all__ = [
    "GuardedAsyncQueuePool",
    "GuardedQueuePool",
    "driver_of",
    "guard_instance",
    "guard_io",
    "guarded_class",
    "install_pool_events",
    "socket_of",
]

#: A checkout: nothing was sent to the server, so any failure may be retried.
CHECKOUT = Operation(sent=False)


class _Life:
    """One DBAPI connection's bookkeeping, kept on its pool record as ``_guard_life`` (replaced by
    the ``connect`` event for each new connection the record opens)."""

    __slots__ = ("born", "fresh", "lent", "lifetime", "returned")

    def __init__(self, now: float, lifetime: float | None) -> None:
        self.born = now
        self.returned = now
        # When the current checkout began (only while an exporter samples use times); a new
        # connection is opened for a checkout.
        self.lent = now
        self.lifetime = lifetime
        # SQLAlchemy clears record.fresh before the checkout rules run: keep our own mark.
        self.fresh = True


def _life(record: Any) -> _Life | None:
    return getattr(record, "_guard_life", None)


def driver_of(dbapi_connection: Any) -> Any:
    """The driver's connection behind a pool's proxy (``_ConnectionFairy``) and SQLAlchemy's
    asyncio adapter, or the connection itself."""
    # Plain attribute reads: the fairy's own ``driver_connection`` is a chain of three
    # properties and a dialect call, and this runs for every statement.
    raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
    return getattr(raw, "driver_connection", raw)


def socket_of(state: EngineState, dbapi_connection: Any) -> int | None:
    """The fd the backstop may cut (None: the connection is closed, nothing can hang on it)."""
    return state.backend.fileno(driver_of(dbapi_connection))


def guard_io(state: EngineState, dbapi_connection: Any, seconds: float | None) -> Any:
    """``backstop()`` on the connection's socket; no backstop once the socket is gone."""
    fd = socket_of(state, dbapi_connection)
    return backstop(-1 if fd is None else fd, None if fd is None else seconds)


class _GuardedPoolMixin:
    """What every guarded pool has, whatever its class: connect retries, the invalidation and
    checkin rules, stats. Each subclass applies the checkout rules in its ``_do_get``."""

    _guard_state: EngineState | None = None
    #: The pool class being guarded. Its methods are called explicitly, not through super():
    #: a guarded twin made for a ``pool=`` instance copies these methods into a direct
    #: subclass of that class (the only kind of class an instance's ``__class__`` may become).
    _guard_base: Any = None

    def connect(self) -> Any:
        state = self._guard_state
        if state is None or in_statement_loop.get():
            return self._guard_base.connect(self)
        # Fast path, as for statements: a checkout is one attempt of the core loop (counted,
        # breaker-checked) but the loop itself is only built once that attempt failed.
        guard = state.guard
        started = guard.first_attempt()
        if started is not None:
            try:
                fairy = self._guard_base.connect(self)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                guard.breaker.record_success()
                return fairy
        else:
            failure = None
        return self._connect_retrying(state, failure, started)

    def _connect_retrying(
        self, state: EngineState, failure: Exception | None, started: float | None
    ) -> Any:
        base_connect = functools.partial(self._guard_base.connect, self)
        guard = state.guard
        try:
            if failure is None or started is None:
                return guard.run_with(lambda _attempts: base_connect(), CHECKOUT, sleep=state.sleep)
            return guard.resume_with(
                lambda _attempts: base_connect(), failure, started, CHECKOUT, sleep=state.sleep
            )
        except PoolguardError as exc:
            if isinstance(exc, sa_exc.SQLAlchemyError):
                raise
            raise as_dropin(exc) from exc.__cause__ or exc

    def _invalidate(
        self, connection: Any, exception: BaseException | None = None, _checkin: bool = True
    ) -> None:
        state = self._guard_state
        if state is None:
            self._guard_base._invalidate(self, connection, exception, _checkin)
            return
        c = state.backend.classify(exception) if exception is not None else None
        if c is None or c.scope is Scope.POOL:
            state.suspect_before = time.time()
        reason = c.reason if c is not None else "invalidated"
        state.guard.stats.disconnect(reason, exception)
        state.guard.stats.evict("disconnect")
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    def _return_conn(self, record: ConnectionPoolEntry) -> None:
        # The checkin rules as a method rather than a "checkin" listener: one call less per
        # return, no event dispatch.
        state = self._guard_state
        if state is not None and record.dbapi_connection is not None:
            _returned(state, record)
        self._guard_base._return_conn(self, record)

    def recreate(self) -> Any:
        new = self._guard_base.recreate(self)
        new._guard_state = self._guard_state
        if self._guard_state is not None:
            self._guard_state.pool_ref[:] = [new]
        return new

    def gauges(self) -> dict[str, Any]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """PoolStats snapshot merged with the live gauges (see DESIGN "Observability")."""
        if self._guard_state is None:
            return self.gauges()
        return self._guard_state.guard.stats.snapshot()


class _GuardedOtherMixin(_GuardedPoolMixin):
    """Any pool class but SQLAlchemy's queue pools: that class's own checkout (no acquire
    timeout of poolguard's), then the checkout rules; checkouts counted for the gauges."""

    _guard_out = 0
    _guard_lock = threading.Lock()  # one per class: these pools check out rarely

    def _do_get(self) -> ConnectionPoolEntry:
        record: ConnectionPoolEntry = self._guard_base._do_get(self)
        state = self._guard_state
        if state is None:
            return record
        with self._guard_lock:
            self._guard_out += 1
        return _vetted(state, record)

    def _return_conn(self, record: ConnectionPoolEntry) -> None:
        with self._guard_lock:
            self._guard_out = max(0, self._guard_out - 1)
        _GuardedPoolMixin._return_conn(self, record)

    def gauges(self) -> dict[str, Any]:
        checked_out = self._guard_out
        queued = getattr(self, "checkedin", None)  # a pool= QueuePool instance counts its own
        held = int(queued()) + checked_out if callable(queued) else _held(self)
        idle = max(0, held - checked_out)
        return {"size": checked_out + idle, "checked_out": checked_out, "idle": idle, "waiting": 0}


def _held(pool: Any) -> int:
    """Open connections a non-queue pool holds (checked out or not), from its own fields."""
    if "connection" in vars(pool):  # StaticPool (a memoized property)
        return 1 if pool.connection.dbapi_connection is not None else 0
    held = getattr(pool, "_all_conns", None)  # SingletonThreadPool
    if held is not None:
        return len(held)
    one = getattr(pool, "_conn", None)  # AssertionPool
    return 1 if isinstance(one, ConnectionPoolEntry) and one.dbapi_connection is not None else 0


class _GuardedQueueMixin(KeepaliveMixin, _GuardedPoolMixin):
    """The queue pools, on a fair queue (:mod:`._handoff`): a returned connection, or room
    freed by a failed connect, goes to the longest waiter; ``_do_get`` waits
    ``min(acquire_timeout, deadline)`` per call."""

    # QueuePool's attribute (declared for mypy): a FairQueue / AsyncFairQueue (_queue_class)
    _pool: Any

    # QueuePool's capacity counters live in the queue, under its lock (see _handoff): reading
    # and setting them as attributes (QueuePool.__init__, dispose, status) goes through here.
    @property
    def _overflow(self) -> int:
        return self._pool.overflow  # type: ignore[no-any-return]

    @_overflow.setter
    def _overflow(self, value: int) -> None:
        # dispose() resets it: room for the waiters, who then open connections.
        self._pool.set_overflow(value)

    @property
    def _max_overflow(self) -> int:
        return self._pool.max_overflow  # type: ignore[no-any-return]

    @_max_overflow.setter
    def _max_overflow(self, value: int) -> None:
        self._pool.set_max_overflow(value)

    def _inc_overflow(self) -> bool:
        return self._pool.take_slot()  # type: ignore[no-any-return]

    def _dec_overflow(self) -> Literal[True]:
        # The freed slot goes to the oldest waiter (it opens a connection), not back to the
        # counter where SQLAlchemy leaves it while that waiter sleeps until its timeout.
        self._pool.release_slot()
        return True

    def _do_get(self) -> ConnectionPoolEntry:
        state = self._guard_state
        assert state is not None
        timeout = state.settings.acquire_timeout
        if current_deadline() is not None:
            timeout = effective_timeout(timeout, what="connection checkout", error=PoolTimeout)
        got = self._pool.take()
        if got is None:
            started = time.monotonic()
            try:
                got = self._pool.wait(timeout)
            except sqla_queue.Empty:
                got = None
            finally:
                state.guard.stats.record_wait(time.monotonic() - started)
            if got is None:  # raised outside "except Empty": the timeout is the error
                raise self._pool_timeout(state, timeout)
        else:
            # An idle connection or room was there: no wait to time (and no clock to read).
            state.guard.stats.record_wait(0.0)
        if got is CREATE:
            got = self._create()
        return _vetted(state, got)

    def _create(self) -> ConnectionPoolEntry:
        try:
            record: ConnectionPoolEntry = self._create_connection()  # type: ignore[attr-defined]
        except BaseException:
            self._dec_overflow()  # the slot to the next waiter: it tries in turn
            raise
        if not self._guard_ka_watched:
            self._keepalive_watch()  # POOLGUARD_KEEPALIVE: see _keepalive.py
        return record

    def _pool_timeout(self, state: EngineState, timeout: float | None) -> PoolguardError:
        state.guard.stats.acquire_timeout(timeout or 0.0)
        g = self.gauges()
        return sa_dropin(
            PoolTimeout,
            f"{state.name}: no connection became free within {timeout or 0:.2f}s (pool_size"
            f" {state.settings.pool_size}, max_overflow {state.settings.max_overflow}:"
            f" {g['checked_out']} checked out, {g['idle']} idle, {g['waiting']} waiting)",
            hint="raise POOLGUARD_POOL_SIZE / POOLGUARD_MAX_OVERFLOW or"
            " POOLGUARD_ACQUIRE_TIMEOUT, or find the code holding connections too long",
        )

    def gauges(self) -> dict[str, Any]:
        checked_out = int(self.checkedout())  # type: ignore[attr-defined]
        idle = int(self.checkedin())  # type: ignore[attr-defined]
        pool_size = int(self.size())  # type: ignore[attr-defined]
        gauges = {
            "size": checked_out + idle,
            "checked_out": checked_out,
            "idle": idle,
            "waiting": self._pool.waiting,
            # Connections beyond pool_size (overflow) are closed when returned.
            "idle_max": pool_size,
        }
        if self._max_overflow >= 0:  # -1: unbounded
            gauges["max"] = pool_size + self._max_overflow
        return gauges


class GuardedQueuePool(_GuardedQueueMixin, QueuePool):
    """SQLAlchemy's QueuePool with poolguard's checkout, timeout and invalidation rules."""

    # SQLAlchemy's own pool messages stay under the logger users already configure.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"
    _guard_base = QueuePool
    _queue_class = FairQueue


class GuardedAsyncQueuePool(_GuardedQueueMixin, AsyncAdaptedQueuePool):
    """The asyncio twin (SQLAlchemy's AsyncAdaptedQueuePool underneath)."""

    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"
    _guard_base = AsyncAdaptedQueuePool
    _queue_class = AsyncFairQueue


_QUEUE_POOLS: dict[type[Pool], type[Pool]] = {
    QueuePool: GuardedQueuePool,
    AsyncAdaptedQueuePool: GuardedAsyncQueuePool,
}


_OTHER_POOLS: dict[type[Pool], type[Pool]] = {}


def guarded_class(poolclass: type[Pool], *, queue: bool = True) -> type[Pool]:
    """The guarded twin of ``poolclass``: :class:`GuardedQueuePool` /
    :class:`GuardedAsyncQueuePool` for SQLAlchemy's queue pools (``queue=True``), otherwise a
    subclass adding :class:`_GuardedOtherMixin` to the class's own checkout (made once)."""
    if getattr(poolclass, "_guard_base", None) is not None:
        return poolclass  # already guarded
    if queue and poolclass in _QUEUE_POOLS:
        return _QUEUE_POOLS[poolclass]
    guarded = _OTHER_POOLS.get(poolclass)
    if guarded is None:
        guarded = _OTHER_POOLS.setdefault(poolclass, _subclass(poolclass))
    return guarded


def _subclass(poolclass: type[Pool]) -> type[Pool]:
    namespace: dict[str, Any] = {
        name: value
        for mixin in reversed(_GuardedOtherMixin.__mro__[:-1])
        for name, value in vars(mixin).items()
        if name not in ("__dict__", "__weakref__", "__module__", "__doc__", "__annotations__")
    }
    namespace |= {
        "_guard_base": poolclass,
        "__module__": __name__,
        "__doc__": f"{poolclass.__name__} with poolguard's connect, checkout and checkin rules.",
        # SQLAlchemy's own pool messages stay under the logger users already configure.
        "_sqla_logger_namespace": f"{poolclass.__module__}.{poolclass.__name__}",
    }
    return type(f"Guarded{poolclass.__name__}", (poolclass,), namespace)


def guard_instance(pool: Pool) -> Pool:
    """A ``pool=`` instance, guarded in place: its class becomes :func:`guarded_class` of it
    (only methods are added, so the instance layout is unchanged). It keeps its own checkout
    (and, for a QueuePool, its own ``timeout``): the user built it that way."""
    pool.__class__ = guarded_class(type(pool), queue=False)
    return pool


# --- pool events -------------------------------------------------------------------------------


def install_pool_events(target: Any, state: EngineState, *, reset: bool = True) -> None:
    """connect / reset listeners implementing the pool rules of DESIGN (the checkout rules are
    :func:`_vetted`, the checkin rules :meth:`_GuardedPoolMixin._return_conn`). ``reset=False``
    leaves reset-on-return to the pool's own setting (a ``pool=`` instance)."""
    # partial, not lambda: called in C, one Python frame less per event.
    event.listen(target, "connect", functools.partial(_on_connect, state))
    if isinstance(target, Engine):  # its first connect runs the dialect's queries: bound them
        bound_dialect_initialize(target.dialect, state)
    if reset:
        event.listen(target, "reset", functools.partial(_on_reset, state))


def _on_connect(state: EngineState, dbapi_connection: Any, record: Any) -> None:
    record._guard_life = _Life(time.monotonic(), state.lifetime())
    state.guard.stats.incr("connects")
    # SQLAlchemy set starttime (wall clock) just before calling the driver's connect.
    state.guard.stats.record_create(max(0.0, time.time() - record.starttime))
    setup = state.backend.setup_sql(state, driver_of(dbapi_connection))
    if setup is not None:
        # Part of connecting: bounded like the connect itself (a server frozen right now).
        limit = state.connect_timeout()
        with guard_io(state, dbapi_connection, limit) as ticket:
            try:
                _run_setup(state, dbapi_connection, setup)
            except Exception as exc:
                if ticket is None or not ticket.fired:
                    raise
                # The backstop cut it: say so (the driver only saw its socket closed, and a
                # bare "consuming input failed" reached the caller, found by the FastAPI chaos
                # run under SIGSTOP). A connect timeout is connect-phase: retried in the window.
                raise ConnectTimeout(
                    f"{state.name}: connected to {state.guard.target or 'the server'}, but the"
                    f" session setup got no reply within {limit:.2f}s (server frozen or network"
                    " down); the connection was discarded",
                    hint="raise the connect timeout or the deadline if the server is slow",
                ) from exc


def _run_setup(state: EngineState, dbapi_connection: Any, setup: str) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(setup)
    finally:
        cursor.close()
    if state.backend.setup_commits:
        dbapi_connection.commit()


def _vetted(state: EngineState, record: ConnectionPoolEntry) -> ConnectionPoolEntry:
    """The checkout rules, applied to a record as it leaves the pool's queue.

    This was a "checkout" listener; as a step of ``_do_get`` it costs no event dispatch and
    keeps SQLAlchemy's checkout on its fast path (measured: checkout + close 23.4 -> ~20 us).
    The outcomes are the listener's: a connection evicted or failing validation is
    invalidated here and ``get_connection()`` (next in SQLAlchemy's checkout) reconnects the
    record in place; any other error returns the invalidated record to the pool and raises.
    """
    dbapi_connection = record.dbapi_connection
    if dbapi_connection is None:
        return record  # reconnected by get_connection(): fresh, nothing to check
    if state.guard.stats.sink is not None:
        _lent(record)
    try:
        # A ROLLBACK sent without waiting at the last return (connection.py): read its reply
        # before anything else uses the connection; no reply, or a failed one, discards it.
        state.backend.settle(state, dbapi_connection, VALIDATE_TIMEOUT)
        _on_checkout(state, dbapi_connection, record)
    except sa_exc.DisconnectionError as exc:
        record.invalidate(exc)
    except BaseException as exc:
        record._checkin_failed(exc, _fairy_was_created=False)  # type: ignore[attr-defined]
        raise
    return record


def _on_checkout(state: EngineState, dbapi_connection: Any, record: Any) -> None:
    life = _life(record)
    if life is None or life.fresh:
        if life is not None:
            life.fresh = False
            # Reconnected in place by an earlier checkout (after its rules ran), maybe before
            # poolguard.reconfigure() changed the session settings it was opened with.
            if record.starttime < state.recycle_before:
                _evict(state, "reconfigured", 0.0, 0.0)
        return  # a connection made for this checkout needs no ping
    now = time.monotonic()
    age = now - life.born
    idle = now - life.returned
    lifetime = life.lifetime
    settings = state.settings
    if state.backend.found_closed(driver_of(dbapi_connection)):
        # asyncpg noticed the peer gone while the connection sat idle: no ping needed to know.
        _evict(state, "disconnect", age, idle)
    if lifetime is not None and age >= lifetime:
        _evict(state, "lifetime", age, idle)
    if settings.max_idle and idle >= settings.max_idle:
        _evict(state, "idle", age, idle)
    suspect = record.starttime < state.suspect_before
    if suspect or (settings.validate_idle is not None and idle >= settings.validate_idle):
        if suspect and record.starttime < state.recycle_before:
            # Opened with session settings (server timeouts) poolguard.reconfigure() changed.
            _evict(state, "reconfigured", age, idle)
        _validate(state, dbapi_connection, age, idle)


def _validate(state: EngineState, dbapi_connection: Any, age: float, idle: float) -> None:
    stats = state.guard.stats
    stats.incr("validations")
    try:
        timeout = effective_timeout(VALIDATE_TIMEOUT, what="checkout validation")
        with guard_io(state, dbapi_connection, timeout):
            _ping(state, dbapi_connection)
    except PoolguardError:
        raise
    except Exception as exc:
        stats.incr("validation_failures")
        stats.evict("validation", age, idle)
        raise sa_exc.DisconnectionError(f"validation failed: {type(exc).__name__}") from exc
    if state.backend.wrong_role(driver_of(dbapi_connection)):
        # Alive, but a failover made its server read-only (or a standby) while the URL asks
        # for a writable one: a ping alone kept it, and each write met 25006 on it in turn.
        stats.incr("validation_failures")
        stats.evict("validation", age, idle)
        raise sa_exc.DisconnectionError("validation failed: the server changed role (failover)")


def _ping(state: EngineState, dbapi_connection: Any) -> None:
    if state.backend.ping(dbapi_connection):
        return  # the driver's own way (asyncpg: one simple-query round trip, no transaction)
    sql = state.backend.ping_sql()
    if sql is None:
        # The driver's own ping (MySQL COM_PING): no statement, no parse, one round trip.
        dbapi_connection.ping(False)
        return
    # The ping must not open a transaction: psycopg (autocommit off) sends BEGIN before any
    # statement, which left a validated connection INTRANS, so its next statement, really the
    # first of its transaction, was judged mid-transaction and a read that then met a killed
    # backend surfaced instead of being retried (~15 in 11,000 reads, measured, because
    # every disconnect marks the older connections suspect and so validated). The BEGIN also
    # cost a round trip. SQLAlchemy's own psycopg ``do_ping`` toggles autocommit the same way
    # (client-side only: no round trip).
    autocommit = dbapi_connection.autocommit
    if not autocommit:
        dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
        if not autocommit and not dbapi_connection.closed:
            dbapi_connection.autocommit = False


def _evict(state: EngineState, reason: str, age: float, idle: float) -> None:
    state.guard.stats.evict(reason, age, idle)
    raise sa_exc.DisconnectionError(f"evicted ({reason})")


def _lent(record: Any) -> None:
    life = _life(record)
    if life is not None:
        life.lent = time.monotonic()


def _returned(state: EngineState, record: Any) -> None:
    life = _life(record)
    if life is None:
        return
    now = time.monotonic()
    life.returned = now
    # Made for the checkout that just ended: the next one applies the rules. (A record reconnected
    # in place by get_connection() skips them at that checkout, so the mark is cleared here, not
    # only by _on_checkout: else the next checkout skipped the suspect check and a pool of
    # killed connections was tried one by one without validation, failing the retries.)
    life.fresh = False
    sink = state.guard.stats.sink
    if sink is not None:
        sink.use.append(now - life.lent)
    lifetime = life.lifetime
    if lifetime is not None and now - life.born >= lifetime:
        state.guard.stats.evict("lifetime", now - life.born, 0.0)
        record.invalidate()  # closed now; the slot reconnects lazily at its next checkout


def _on_reset(state: EngineState, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    # SQLAlchemy's own reset is off (pool_reset_on_return=None): this listener is the only
    # reset, in the mode the user asked for (state.reset). libpq's transaction status says,
    # without a round trip, whether a ROLLBACK (or COMMIT) is needed at all.
    if reset_state.terminate_only or not reset_state.asyncio_safe:
        return
    need = state.backend.needs_reset(driver_of(dbapi_connection))
    if need and state.reset == "none":
        return  # pool_reset_on_return=None: returned as it is, like plain SQLAlchemy
    if need and reset_state.transaction_was_reset and not state.backend.exact_transaction_status:
        # MySQL's flags cannot tell a clean connection from an open read snapshot, but
        # SQLAlchemy can: its Connection just ended the transaction itself (measured: two
        # ROLLBACKs per request without this, vanilla SQLAlchemy sends one).
        need = False
    if need is None:
        state.guard.stats.evict("disconnect")
        record.invalidate()
    elif need:
        with guard_io(state, dbapi_connection, VALIDATE_TIMEOUT):
            if state.reset == "commit":
                dbapi_connection.commit()
            else:
                dbapi_connection.rollback()
