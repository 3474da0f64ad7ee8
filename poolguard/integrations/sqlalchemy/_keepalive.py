"""Keepalive sweeps of the guarded SQLAlchemy queue pools (``POOLGUARD_KEEPALIVE``).

The process-wide thread (:mod:`poolguard.core.keepalive`) calls :func:`sweep` for a sync pool;
an asyncio pool's sweep runs the same function on its own event loop, inside
``greenlet_spawn`` (the driver calls then await through SQLAlchemy's greenlet bridge, as every
statement of an ``AsyncEngine`` does).

One record at a time is *lent* by the fair queue (:meth:`~._handoff._Handoff.lend`): it leaves
the idle set under the queue's lock, so no caller can check it out mid-ping, and its slot is
freed while it is away, so a caller arriving during the ping takes another idle record or opens
a connection instead of waiting for the ping. Then:

- the record is pinged the way a checkout validates (a deferred ROLLBACK's reply is read first,
  then the backend's ping under the client backstop, at most ``VALIDATE_TIMEOUT``);
- a failed ping evicts the connection (reason ``keepalive``) and reconnects the record in place
  (one attempt, bounded by ``connect_timeout``): the pool keeps the idle connections it had,
  which is what "minimum" means for a QueuePool (it never shrinks on its own). A reconnect that
  fails leaves the record invalidated: it reconnects at its next checkout, as SQLAlchemy does;
- the record takes its slot back (the oldest waiter gets it first); if a caller used the slot
  meanwhile, or the pool was disposed, the record is closed instead.

Records used within the interval are not pinged (``returned`` or the last ping is recent), nor
records the next checkout retires anyway (past their lifetime or ``max_idle``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from sqlalchemy.util import greenlet_spawn

from poolguard.core import keepalive
from poolguard.core.stats import PoolStats
from poolguard.integrations.sqlalchemy._handoff import AsyncFairQueue
from poolguard.integrations.sqlalchemy._state import VALIDATE_TIMEOUT, EngineState
from poolguard.logs import pool_fields

__all__ = ["KeepaliveMixin", "due", "next_due", "sweep"]

log = logging.getLogger("poolguard.keepalive")


class KeepaliveMixin:
    """What a guarded queue pool adds for keepalive: the :class:`~poolguard.core.keepalive.
    Sweepable` interface, registration at its first connection, unregistration at dispose()."""

    _guard_state: EngineState | None
    _guard_base: Any
    _pool: Any

    #: Bumped by dispose(): a record lent to a ping during dispose() is closed, not put back.
    _guard_ka_generation = 0
    _guard_ka_watched = False
    _guard_ka_opened = False
    """Has the pool opened a connection (since its creation)? Only then is there one to keep."""
    _guard_ka_loop: asyncio.AbstractEventLoop | None = None

    def _keepalive_watch(self) -> None:
        """Called when the pool opened a connection: a pool with none has nothing to keep alive
        (and at construction engine.py has not set ``_guard_state`` yet)."""
        if self._guard_ka_watched:
            return
        if not self._guard_ka_opened:
            self._guard_ka_opened = True
            if isinstance(self._pool, AsyncFairQueue):
                # _create runs in the engine's greenlet, on the loop its connections belong
                # to; kept for keepalive_reconfigured(), which may run on another thread.
                self._guard_ka_loop = asyncio.get_running_loop()
        if self.keepalive_interval() is None:
            return
        self._guard_ka_watched = True
        keepalive.watch(self, self._guard_ka_loop)

    def keepalive_reconfigured(self) -> None:
        """``poolguard.reconfigure`` changed ``keepalive``: watched (or not) at once."""
        if self._guard_ka_opened:
            self._guard_ka_watched = keepalive.retune(self, self._guard_ka_loop)

    def keepalive_interval(self) -> float | None:
        state = self._guard_state
        return None if state is None else state.settings.keepalive

    def keepalive_stats(self) -> PoolStats | None:
        state = self._guard_state
        return None if state is None else state.guard.stats

    def keepalive_sweep(self, now: float) -> float | None:
        return sweep(self, now)

    async def akeepalive_sweep(self, now: float) -> float | None:
        result: float | None = await greenlet_spawn(sweep, self, now)
        return result

    def dispose(self) -> None:
        self._guard_ka_generation += 1
        self._guard_ka_opened = False  # reconfigure() watches it again only once it reconnects
        if self._guard_ka_watched:
            self._guard_ka_watched = False
            keepalive.unwatch(self)
        self._guard_base.dispose(self)


def due(state: EngineState, now: float, interval: float, record: Any) -> bool:
    """Should this idle record be pinged now?"""
    from poolguard.integrations.sqlalchemy.pool import _life

    life = _life(record)
    if life is None or record.dbapi_connection is None:
        return False  # not ours, or invalidated: nothing open to keep alive
    if now - max(life.returned, _pinged(record)) < interval:
        return False
    if life.lifetime is not None and now - life.born >= life.lifetime:
        return False  # the next checkout retires it without a round trip
    max_idle = state.settings.max_idle
    return not (max_idle and now - life.returned >= max_idle)


def next_due(queue: Any, interval: float) -> float | None:
    """When the earliest idle record becomes due (monotonic); None when nothing is idle."""
    from poolguard.integrations.sqlalchemy.pool import _life

    times = []
    for record in queue.idle_records():
        life = _life(record)
        if life is not None:
            times.append(max(life.returned, _pinged(record)) + interval)
    return min(times, default=None)


def sweep(pool: Any, now: float) -> float | None:
    """Ping every idle record of ``pool`` due now; return when the next one is due."""
    state: EngineState | None = pool._guard_state
    interval = None if state is None else state.settings.keepalive
    if state is None or interval is None:
        return None
    queue = pool._pool
    generation = pool._guard_ka_generation

    def undisposed() -> bool:
        return bool(pool._guard_ka_generation == generation)

    for _ in range(queue.qsize()):  # each record at most once per sweep
        now = time.monotonic()
        record = queue.lend(functools.partial(due, state, now, interval))
        if record is None:
            break
        try:
            keep(state, record, now)
        finally:
            if not queue.take_back(record, undisposed):
                record.close()
    return next_due(queue, interval)


def keep(state: EngineState, record: Any, now: float) -> None:
    """Ping one lent record; on failure evict it and reconnect it in place."""
    from poolguard.integrations.sqlalchemy.pool import _life, _ping, guard_io

    life = _life(record)
    assert life is not None  # due() said so
    stats = state.guard.stats
    stats.incr("keepalive_pings")
    dbapi_connection = record.dbapi_connection
    try:
        state.backend.settle(state, dbapi_connection, VALIDATE_TIMEOUT)
        with guard_io(state, dbapi_connection, VALIDATE_TIMEOUT):
            _ping(state, dbapi_connection)
    except Exception as exc:
        stats.incr("keepalive_failures")
        stats.evict("keepalive", now - life.born, now - life.returned)
        record.invalidate(exc)
        _refill(state, record)
    else:
        record._guard_pinged = time.monotonic()


def _pinged(record: Any) -> float:
    """The last successful keepalive ping of the record's connection (0: never). Kept apart from
    the checkout bookkeeping: ``max_idle`` and ``validate_idle`` measure idleness since the last
    *use*, which a keepalive ping is not."""
    pinged: float = getattr(record, "_guard_pinged", 0.0)
    return pinged


def _refill(state: EngineState, record: Any) -> None:
    from poolguard.integrations.sqlalchemy.pool import _life

    try:
        record.get_connection()  # reconnects the invalidated record (connect event: setup)
        life = _life(record)
        if life is not None:
            # Not made for a checkout: the next checkout applies the rules (the suspect check
            # above all), else a refilled connection killed meanwhile would be used unchecked.
            life.fresh = False
    except Exception as exc:
        # The server may be down: the record reconnects at its next checkout, under the
        # checkout's retries, breaker and deadline, which this background attempt has none of.
        log.info(
            "%s: keepalive could not replace a dead connection: %s",
            state.name,
            exc,
            extra=pool_fields(
                state.guard.stats, "keepalive_refill_failed", error_type=type(exc).__name__
            ),
        )
