"""examples/celery_app.py run by a real Celery worker (celery.contrib.testing's ``start_worker``:
a worker thread with a 4-thread pool, in-memory broker and result backend) against a real
PostgreSQL whose app sessions are killed (``pg_terminate_backend``) while transfers run.

Every task succeeds, money is conserved, and each transfer is applied exactly once: the balances
are what the stored transfers say, one stored row per task, and sending a task again with the
same transfer id (what a Celery retry or an ``acks_late`` redelivery does) changes nothing.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery", reason="needs the test extra (pip install -e .[test])")

from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

ACCOUNTS = 5
START = 1000
TASKS = 40
WORKER_THREADS = 4
KILL_EVERY = 0.05
OPTIONS: dict[str, Any] = {
    "pool_size": WORKER_THREADS,
    "connect_timeout": 1.0,
    "acquire_timeout": 2.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
}


@pytest.fixture
def app_name() -> str:
    return f"celery-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def engine(postgres_server: Any, app_name: str) -> Iterator[Engine]:
    # The test's own application_name: the kills below hit only this app's sessions.
    engine = poolguard.create_engine(
        postgres_server.url, connect_args={"application_name": app_name}, **OPTIONS
    )
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS wallets, wallet_transfers"))
    yield engine
    engine.dispose()


@pytest.fixture
def transfer(engine: Engine) -> Iterator[Any]:
    import celery_app  # examples/, put on sys.path by conftest.py

    app = celery_app.create_celery(engine, broker_url="memory://", result_backend="cache+memory://")
    with engine.begin() as conn:
        for i in range(1, ACCOUNTS + 1):
            conn.execute(text("INSERT INTO wallets VALUES (:i, :b)"), {"i": i, "b": START})
    with start_worker(
        app,
        pool="threads",
        concurrency=WORKER_THREADS,
        perform_ping_check=False,
        shutdown_timeout=30,
    ):
        yield app.tasks["transfer"]


def _ledger(url: str) -> tuple[dict[int, int], list[tuple[str, int, int, int]]]:
    # Checked through a connection of its own, not the app's pool the kills were aimed at.
    checker = poolguard.create_engine(url, poolclass=NullPool)
    try:
        with checker.connect() as conn:
            balances = dict(conn.execute(text("SELECT id, balance FROM wallets")).tuples().all())
            rows = conn.execute(text("SELECT id, src, dst, amount FROM wallet_transfers")).all()
    finally:
        checker.dispose()
    return balances, [(r.id, r.src, r.dst, r.amount) for r in rows]


def test_transfers_under_session_kills_are_applied_once(
    postgres_server: Any, engine: Engine, transfer: Any, app_name: str
) -> None:
    rng = random.Random(13)
    sent = []
    for _ in range(TASKS):
        src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
        sent.append((uuid.uuid4().hex, src, dst, rng.randint(1, 50)))

    killed = 0
    stop = threading.Event()

    def kill() -> None:
        nonlocal killed
        while not stop.wait(KILL_EVERY):
            killed += postgres_server.kill_connections(application_name=app_name)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        outcomes = [r.get(timeout=120) for r in [transfer.delay(*args) for args in sent]]
        # A retry / redelivery of tasks that already ran (same transfer ids), still under kills.
        again = [r.get(timeout=120) for r in [transfer.delay(*args) for args in sent[:5]]]
    finally:
        stop.set()
        killer.join(10)
    stats = poolguard.stats(engine)
    print(f"sessions killed: {killed}; stats: {stats}")

    assert killed > 0, "no session was killed while the tasks ran"
    assert stats["retries"] > 0
    assert [o["applied"] for o in outcomes] == [True] * TASKS  # every task succeeded
    assert [o["applied"] for o in again] == [False] * 5  # the repeats found their ids
    balances, rows = _ledger(postgres_server.url)
    assert sum(balances.values()) == ACCOUNTS * START  # money conserved
    assert sorted(rows) == sorted(sent)  # each transfer stored once
    expected = dict.fromkeys(range(1, ACCOUNTS + 1), START)
    for _, src, dst, amount in sent:
        expected[src] -= amount
        expected[dst] += amount
    assert balances == expected  # and applied once
