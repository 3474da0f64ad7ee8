"""The circuit breaker at its defaults, met the way an app meets it: units of work, many callers.

The fault suites turn the breaker off (``FAST``) so that they test one thing at a time; these tests
keep it on with the library's defaults, because the half-open probe interacts with everything else:
a ``run_transaction`` unit admitted as the probe runs its own checkout and statements, which ask
the breaker again (measured before the fix: 10 s stalls on a healthy server, and every other
caller waiting with it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

import poolguard
from poolguard.config.settings import Settings
from poolguard.core.breaker import FIRST_OPEN_INTERVAL, BreakerState
from poolguard.integrations.sqlalchemy.engine import guard_of
from poolguard.testing import stream_during

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}
#: The library's own breaker, budget and retry defaults (the shared FAST options turn them off).
DEFAULT_POLICY: dict[str, Any] = {
    name: _DEFAULTS[name]
    for name in (
        "breaker_failures",
        "breaker_reset",
        "retry_budget",
        "retry_attempts",
        "retry_timeout",
        "retry_backoff_initial",
        "retry_backoff_max",
    )
}
DEADLINE = 5.0
GRACE = 1.0
DOWNTIME = 1.5
CALLERS = 3  # threads, and as many asyncio tasks


def _half_open(engine: Engine | AsyncEngine) -> None:
    """Open the engine's breaker the way failed connects do, and wait until it is half-open."""
    breaker = guard_of(engine).guard.breaker
    assert breaker.failures is not None
    for _ in range(breaker.failures):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    time.sleep(FIRST_OPEN_INTERVAL + 0.05)
    assert breaker.state is BreakerState.HALF_OPEN


def _ledger(engine: Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (1, 1000), (2, 1000)"))


def _transfer(table: str, amount: int) -> Any:
    def unit(session: Any) -> None:
        session.execute(
            text(f"UPDATE {table} SET balance = balance - :a WHERE id = 1"), {"a": amount}
        )
        session.execute(
            text(f"UPDATE {table} SET balance = balance + :a WHERE id = 2"), {"a": amount}
        )

    return unit


def _total(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT sum(balance) FROM {table}")).scalar_one())


def test_run_transaction_admitted_as_the_probe_does_not_wait_on_itself(
    postgres_server: Any, make_engine: Any
) -> None:
    engine = make_engine(postgres_server.url, **DEFAULT_POLICY)
    Session = sessionmaker(engine)
    _half_open(engine)
    with poolguard.deadline(DEADLINE):
        value = poolguard.run_transaction(Session, lambda s: s.execute(text("SELECT 1")).scalar())
    assert value == 1
    snap = poolguard.stats(engine)
    assert snap["breaker"]["waits"] == 0  # before the fix: polled its own probe until the deadline
    assert snap["circuit_open_rejections"] == 0
    assert guard_of(engine).guard.breaker.state is BreakerState.CLOSED


@both_async_drivers
async def test_async_run_transaction_admitted_as_the_probe_does_not_wait_on_itself(
    postgres_server: Any, make_async_engine: Any
) -> None:
    engine = make_async_engine(postgres_server.url, **DEFAULT_POLICY)
    Session = async_sessionmaker(engine)
    _half_open(engine)

    async def unit(session: Any) -> Any:
        return (await session.execute(text("SELECT 1"))).scalar()

    async with poolguard.deadline(DEADLINE):
        assert await poolguard.run_transaction_async(Session, unit) == 1
    snap = poolguard.stats(engine)
    assert snap["breaker"]["waits"] == 0
    assert snap["circuit_open_rejections"] == 0
    assert guard_of(engine).guard.breaker.state is BreakerState.CLOSED


def test_callers_mixed_through_a_half_open_breaker(
    postgres_server: Any, make_engine: Any, app_name: str
) -> None:
    # Threads start reads, autocommit writes and transfers at the moment the breaker turns
    # half-open: one of them is the probe, the others wait for it; nobody fails, nobody stalls.
    engine = make_engine(postgres_server.url, pool_size=2, max_overflow=2, **DEFAULT_POLICY)
    table = f"ledger_{app_name}"
    _ledger(engine, table)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table}_log (n int)"))
    Session = sessionmaker(engine)
    _half_open(engine)
    errors: list[BaseException] = []
    slowest = [0.0]
    start = threading.Barrier(CALLERS * 2)

    def caller(i: int) -> None:
        start.wait()
        for k in range(5):
            t0 = time.monotonic()
            try:
                with poolguard.deadline(DEADLINE):
                    _one_of_the_mix(engine, Session, table, i + k)
            except Exception as exc:
                errors.append(exc)
            slowest[0] = max(slowest[0], time.monotonic() - t0)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert slowest[0] < DEADLINE  # nobody waited out a probe until the deadline
    assert _total(engine, table) == 2000
    assert guard_of(engine).guard.breaker.state is BreakerState.CLOSED


def _one_of_the_mix(engine: Engine, Session: Any, table: str, n: int) -> None:
    kind = n % 3
    if kind == 0:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    elif kind == 1:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table}_log VALUES (:n)"), {"n": n})
    else:
        poolguard.run_transaction(Session, _transfer(table, 1))


def test_restart_under_a_mix_with_the_default_breaker(
    dedicated_server: Any, make_engine: Any
) -> None:
    # Reads and run_transaction units from threads through a 1.5 s restart, breaker and budget
    # at their defaults: zero errors, nobody past the deadline + grace, money conserved.
    server = dedicated_server("postgres")
    engine = make_engine(server.url, pool_size=2, max_overflow=2, **DEFAULT_POLICY)
    table = "ledger_restart"
    _ledger(engine, table)
    Session = sessionmaker(engine)
    counter = itertools.count()
    durations: list[float] = []

    def operation() -> None:
        n = next(counter)
        t0 = time.monotonic()
        try:
            with poolguard.deadline(DEADLINE):
                if n % 2:
                    with engine.connect() as conn:
                        assert conn.execute(text("SELECT 1")).scalar() == 1
                else:
                    # A COMMIT in flight when the server stops has no reply: resolved by
                    # pg_xact_status once it is back, so no transfer surfaces an error.
                    poolguard.run_transaction(Session, _transfer(table, 1), resolve_ambiguous=True)
        finally:
            durations.append(time.monotonic() - t0)

    result = stream_during(lambda: server.restart(downtime=DOWNTIME), operation, threads=CALLERS)
    assert result.errors == []
    assert result.spans_fault()
    assert max(durations) < DEADLINE + GRACE
    assert _total(engine, table) == 2000


@both_async_drivers
async def test_async_restart_under_a_mix_with_the_default_breaker(
    dedicated_server: Any, make_engine: Any, make_async_engine: Any
) -> None:
    server = dedicated_server("postgres")
    table = "ledger_restart_async"
    _ledger(make_engine(server.url), table)
    engine = make_async_engine(server.url, pool_size=2, max_overflow=2, **DEFAULT_POLICY)
    Session = async_sessionmaker(engine)
    errors: list[BaseException] = []
    durations: list[float] = []
    ok = [0]
    stop = asyncio.Event()

    async def transfer(session: Any) -> None:
        await session.execute(text(f"UPDATE {table} SET balance = balance - 1 WHERE id = 1"))
        await session.execute(text(f"UPDATE {table} SET balance = balance + 1 WHERE id = 2"))

    async def caller(i: int) -> None:
        n = i
        while not stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                async with poolguard.deadline(DEADLINE):
                    if n % 2:
                        async with engine.connect() as conn:
                            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
                    else:
                        await poolguard.run_transaction_async(
                            Session, transfer, resolve_ambiguous=True
                        )
                ok[0] += 1
            except Exception as exc:
                errors.append(exc)
            durations.append(time.monotonic() - t0)
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(caller(i)) for i in range(CALLERS)]
    await asyncio.sleep(0.3)
    await asyncio.get_running_loop().run_in_executor(None, lambda: server.restart(DOWNTIME))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert errors == []
    assert ok[0] > 10
    assert max(durations) < DEADLINE + GRACE
    async with engine.connect() as conn:
        total = (await conn.execute(text(f"SELECT sum(balance) FROM {table}"))).scalar_one()
    assert total == 2000
