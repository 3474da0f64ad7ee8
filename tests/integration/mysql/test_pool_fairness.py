"""Fair hand-off on MariaDB: the engines use the same guarded queue pools as PostgreSQL's
(the full set of fairness tests: tests/integration/postgres/test_pool_fairness.py), here with
PyMySQL (threads) and aiomysql (asyncio). Orders come from the ``waiting`` gauge, never timings.
"""

from __future__ import annotations

from typing import Any

import pytest

import poolguard

pytestmark = pytest.mark.mysql

FAIR = {"max_overflow": 0, "validate_idle": None}


def test_callers_are_served_in_turn(
    make_engine: Any, mysql_server: Any, serve_in_turn: Any
) -> None:
    """A returning thread queues behind the waiters: the connection goes round."""
    engine = make_engine(mysql_server.url, pool_size=1, **FAIR)
    names, rounds = ["a", "b", "c"], 4
    served = serve_in_turn(engine, names, rounds)
    assert sorted(served[:3]) == names
    assert served == served[:3] * rounds, served


async def test_async_tasks_are_served_in_request_order(
    make_async_engine: Any, mysql_server: Any, serve_in_request_order: Any
) -> None:
    engine = make_async_engine(mysql_server.url, pool_size=8, acquire_timeout=60, **FAIR)
    requests, grants = await serve_in_request_order(engine)
    assert grants == requests
    snap = poolguard.stats(engine)
    assert (snap["checked_out"], snap["idle"], snap["waiting"], snap["connects"]) == (0, 8, 0, 8)
