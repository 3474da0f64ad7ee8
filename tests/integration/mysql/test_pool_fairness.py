"""Fair hand-off on MariaDB: the engines use the same guarded queue pools as PostgreSQL's
(the full set of fairness tests: tests/integration/postgres/test_pool_fairness.py), here with
PyMySQL (threads) and aiomysql (asyncio). Orders come from the ``waiting`` gauge, never timings.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = pytest.mark.mysql

HANG_GUARD = 20.0  # only to fail instead of hanging, never a performance bound
FAIR = {"max_overflow": 0, "validate_idle": None}


def until(predicate: Callable[[], bool]) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, "condition never became true"
        time.sleep(0.001)


def has_waiters(engine: Any, n: int) -> bool:
    return int(poolguard.stats(engine)["waiting"]) >= n


def test_callers_are_served_in_turn(make_engine: Any, mysql_server: Any) -> None:
    """Each holder waits until everyone else is queued, returns and asks again at once: the
    connection goes round (SQLAlchemy's queue let the returning thread take it back)."""
    engine = make_engine(mysql_server.url, pool_size=1, **FAIR)
    names, rounds = ["a", "b", "c"], 4
    served: list[str] = []
    grants = dict.fromkeys(names, 0)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            for _ in range(rounds):
                with engine.connect() as conn:
                    with lock:
                        served.append(name)
                        grants[name] += 1
                        others = sum(1 for n in names if n != name and grants[n] < rounds)
                    until(functools.partial(has_waiters, engine, others))
                    conn.execute(text("SELECT 1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD * rounds)
    assert errors == []
    assert sorted(served[:3]) == names
    assert served == served[:3] * rounds, served


async def test_async_tasks_are_served_in_request_order(
    make_async_engine: Any, mysql_server: Any
) -> None:
    engine = make_async_engine(mysql_server.url, pool_size=8, acquire_timeout=60, **FAIR)
    warm = [await engine.connect() for _ in range(8)]
    for conn in warm:
        await conn.close()
    requests: list[tuple[int, int]] = []
    grants: list[tuple[int, int]] = []

    async def worker(i: int) -> None:
        for r in range(3):
            requests.append((i, r))
            async with engine.connect() as conn:
                grants.append((i, r))
                await conn.execute(text("SELECT 1"))

    await asyncio.gather(*(worker(i) for i in range(200)))
    assert grants == requests
    snap = poolguard.stats(engine)
    assert (snap["checked_out"], snap["idle"], snap["waiting"], snap["connects"]) == (0, 8, 0, 8)
