"""Fair hand-off in the guarded queue pools, against a real PostgreSQL (the queue's own logic:
tests/unit/test_sqlalchemy_handoff.py).

Semantics only, never timings: orders are made deterministic with the pool's ``waiting`` gauge (a
caller is counted once it is queued), and every wait has a hang guard that fails the test
instead of hanging it, not a performance bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

from .conftest import both_async_drivers

pytestmark = pytest.mark.postgres

HANG_GUARD = 20.0
#: No validation ping at checkout: a checkout then never awaits, so in asyncio the order in
#: which tasks ask is the order in which they queue.
FAIR = {"max_overflow": 0, "validate_idle": None}
#: Two slots; a blackholed connect fails after 1 s, a waiter gives up after 5 s.
NETWORK_FAULT = {"pool_size": 2, "acquire_timeout": 5, "connect_timeout": 1, "retry_budget": None}


def until(predicate: Callable[[], bool]) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, "condition never became true"
        time.sleep(0.001)


def waiting(engine: Any) -> int:
    return int(poolguard.stats(engine)["waiting"])


def has_waiters(engine: Any, n: int) -> bool:
    return waiting(engine) >= n


class Caller(threading.Thread):
    """``engine.connect()`` in a thread: ``result`` is the connection's backend pid or the
    error; the connection is held until ``release`` is set."""

    def __init__(self, engine: Any, deadline: float | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.deadline = deadline
        self.result: Any = None
        self.served = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        try:
            if self.deadline is not None:
                with poolguard.deadline(self.deadline):
                    conn = self.engine.connect()
            else:
                conn = self.engine.connect()
        except Exception as exc:
            self.result = exc
            self.served.set()
            return
        with conn:
            self.result = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            self.served.set()
            self.release.wait(HANG_GUARD)

    def queue(self) -> Caller:
        """Start and return once queued in the pool."""
        before = waiting(self.engine)
        self.start()
        until(lambda: waiting(self.engine) > before)
        return self

    def finish(self) -> Any:
        self.release.set()
        self.join(HANG_GUARD)
        assert not self.is_alive()
        return self.result


def test_callers_are_served_in_turn_a_returning_thread_queues_behind(
    make_engine: Any, postgres_server: Any, serve_in_turn: Any
) -> None:
    """Each holder waits until everyone else is queued, returns the connection and asks again
    at once: with a fair pool the connection goes round; with SQLAlchemy's queue the returning
    thread took it back before the woken waiter ran (measured: "a a a a ...")."""
    engine = make_engine(postgres_server.url, pool_size=1, **FAIR)
    names, rounds = ["a", "b", "c", "d"], 5
    served = serve_in_turn(engine, names, rounds)
    assert len(served) == len(names) * rounds
    assert sorted(served[:4]) == names
    assert served == served[:4] * rounds, served
    assert waiting(engine) == 0


def test_a_returned_connection_is_handed_over_not_left_idle(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, **FAIR)
    conn = engine.connect()
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    waiter = Caller(engine).queue()
    conn.close()
    # Still in the returning thread: the connection already belongs to the waiter.
    assert engine.pool.checkedin() == 0
    with pytest.raises(poolguard.PoolTimeout), poolguard.deadline(0.2):
        engine.connect()  # asks again at once: queued behind, not served
    assert waiter.finish() == pid
    assert engine.pool.checkedin() == 1


def test_timeouts_still_honoured_and_a_timed_out_caller_leaves_no_ghost(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url, pool_size=1, acquire_timeout=HANG_GUARD, **FAIR)
    conn = engine.connect()
    impatient = Caller(engine, deadline=0.3).queue()
    patient = Caller(engine).queue()
    impatient.join(HANG_GUARD)
    assert isinstance(impatient.result, poolguard.PoolTimeout)
    assert isinstance(impatient.result, sqlalchemy.exc.TimeoutError)
    assert "1 waiting" in str(impatient.result)  # the patient one: it left before the message
    assert waiting(engine) == 1
    conn.close()
    assert isinstance(patient.finish(), int)  # served, not lost to the one that left
    snap = poolguard.stats(engine)
    assert (snap["checked_out"], snap["idle"], snap["waiting"]) == (0, 1, 0)


def test_a_failed_connect_wakes_a_waiter(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    """The connect holding the last free slot fails (network blackholed: connect timeout)
    while another caller waits: the slot goes to that caller, who connects once the network is
    back. SQLAlchemy decremented its overflow counter and woke no one: the waiter slept until
    its acquire timeout while the failed caller's retry took the room."""
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), **NETWORK_FAULT, **FAIR)
    held = engine.connect()  # one of the two slots
    proxy.blackhole()
    connecting = Caller(engine)  # takes the other slot; its connect hangs, then times out
    connecting.start()
    until(lambda: engine.pool.checkedout() == 2)
    waiter = Caller(engine).queue()
    until(lambda: poolguard.stats(engine)["connect_failures"] >= 1)
    proxy.clear()  # the slot is the waiter's already: its connect gets through
    try:
        assert waiter.served.wait(HANG_GUARD)
        assert isinstance(waiter.result, int), waiter.result
    finally:
        waiter.finish()
        held.close()
        connecting.finish()
    assert isinstance(connecting.result, int)  # its retry queued, served after the waiter


def test_dispose_with_waiters(make_engine: Any, postgres_server: Any) -> None:
    """engine.dispose() resets the pool's counters: its waiters get that room and connect
    (SQLAlchemy's queue left them waiting for a return, here until the acquire timeout)."""
    engine = make_engine(postgres_server.url, pool_size=2, acquire_timeout=5, **FAIR)
    held = [engine.connect() for _ in range(2)]
    waiters = [Caller(engine).queue() for _ in range(3)]
    engine.dispose()  # room for two
    try:
        for w in waiters[:2]:
            assert w.served.wait(HANG_GUARD)
        assert [isinstance(w.result, int) for w in waiters[:2]] == [True, True]
        assert not waiters[2].served.is_set()  # the third waits for a return
        held[0].close()
        assert waiters[2].served.wait(HANG_GUARD)
        assert isinstance(waiters[2].result, int)
    finally:
        for w in waiters:
            w.finish()
        for conn in held:
            conn.close()
    assert type(engine.pool).__name__ == "GuardedQueuePool"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert waiting(engine) == 0


# --- asyncio -------------------------------------------------------------------------------


async def test_async_200_tasks_on_8_connections_are_served_in_request_order(
    make_async_engine: Any, postgres_server: Any, serve_in_request_order: Any
) -> None:
    """Each task asks three times; a task that returns a connection asks again at once. FIFO:
    the order of grants is exactly the order of requests (a checkout does not await before it
    queues). With asyncio.Queue underneath, a returning task took the connection back."""
    engine = make_async_engine(postgres_server.url, pool_size=8, acquire_timeout=60, **FAIR)
    requests, grants = await serve_in_request_order(engine)
    assert len(grants) == 600
    assert grants == requests
    snap = poolguard.stats(engine)
    assert (snap["checked_out"], snap["idle"], snap["waiting"], snap["connects"]) == (0, 8, 0, 8)


@both_async_drivers
async def test_async_timeout_and_cancellation_leave_no_ghost(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(postgres_server.url, pool_size=1, acquire_timeout=HANG_GUARD, **FAIR)
    conn = await engine.connect()

    async def ask(deadline: float | None = None) -> Any:
        if deadline is None:
            async with engine.connect() as c:
                return (await c.execute(text("SELECT 1"))).scalar()
        with poolguard.deadline(deadline):
            async with engine.connect() as c:
                return (await c.execute(text("SELECT 1"))).scalar()

    async def queued(coro: Any) -> asyncio.Task[Any]:
        before = waiting(engine)
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        while waiting(engine) == before:
            await asyncio.sleep(0)
        return task

    impatient = await queued(ask(0.3))
    cancelled = await queued(ask())
    patient = await queued(ask())
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    with pytest.raises(poolguard.PoolTimeout):
        await impatient
    assert waiting(engine) == 1
    await conn.close()
    assert await patient == 1
    snap = poolguard.stats(engine)
    assert (snap["checked_out"], snap["idle"], snap["waiting"]) == (0, 1, 0)


@both_async_drivers
async def test_async_failed_connect_wakes_a_waiter(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), **NETWORK_FAULT, **FAIR)
    held = await engine.connect()
    proxy.blackhole()
    waiter_done = asyncio.Event()

    async def connecting() -> Any:
        async with engine.connect() as c:  # times out once, then retries, queued
            await waiter_done.wait()  # holds it until the waiter was served
            return (await c.execute(text("SELECT 1"))).scalar()

    async def waiter() -> Any:
        try:
            async with engine.connect() as c:
                return (await c.execute(text("SELECT 2"))).scalar()
        finally:
            waiter_done.set()

    first = asyncio.ensure_future(connecting())
    while engine.sync_engine.pool.checkedout() < 2:
        await asyncio.sleep(0.001)
    second = asyncio.ensure_future(waiter())
    while waiting(engine) < 1:
        await asyncio.sleep(0.001)
    while poolguard.stats(engine)["connect_failures"] < 1:
        await asyncio.sleep(0.001)
    await asyncio.to_thread(proxy.clear)
    try:
        assert await asyncio.wait_for(second, HANG_GUARD) == 2
    finally:
        await held.close()
    assert await asyncio.wait_for(first, HANG_GUARD) == 1
