"""Failover of a real primary/standby set (``pg_replica_set``) under poolguard engines.

- A primary demoted read-only while its standby is promoted: the pool's idle connections to it
  still answer a ping, so the old code reused them one after another, and each write met
  ``25006 read_only_sql_transaction`` until its attempts ran out (2 of 20 writes failed with 8
  idle connections). Now a suspect connection whose server reports the wrong role
  (ParameterStatus ``default_transaction_read_only`` / ``in_hot_standby``) is replaced at
  checkout: every write re-runs on the new primary.
- The ledger through a crash of the primary and a promotion: transfers in ``run_transaction``
  from threads and asyncio tasks, reads in parallel. Money is conserved, no acknowledged
  transfer is lost (synchronous replication: an acknowledged COMMIT is on the standby), none
  reported failed is stored, reads see no error, and writes resume (the time is printed).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import poolguard
from poolguard.errors import AmbiguousResultError

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]


def test_writes_leave_a_demoted_primary_for_the_promoted_one(
    pg_replica_set: Any, make_engine: Any
) -> None:
    rs = pg_replica_set(1)
    engine = make_engine(rs.multi_host_url(), pool_size=8)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
    held = [engine.connect() for _ in range(8)]
    for conn in held:
        conn.execute(text("SELECT 1"))
    for conn in held:
        conn.close()  # 8 idle connections to the primary about to be demoted
    rs.make_read_only()
    rs.wait_replayed()
    new = rs.promote()

    failed = []
    for n in range(20):
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
        except Exception as exc:  # the test counts them
            failed.append(exc)
    assert not failed, f"{len(failed)} of 20 writes failed: {failed[0]!r}"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT inet_server_port(), count(*) FROM t")).one() == (
            new.port,
            20,
        )


# --- the ledger through a promotion --------------------------------------------------------

ACCOUNTS = 8
START = 1000
THREADS = 3
TASKS = 3
READERS = 2
BEFORE = 1.5  # seconds of traffic before the crash
AFTER = 3.0  # seconds of traffic after the promotion


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "fo_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Transfer(Base):
    __tablename__ = "fo_transfer"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    src: Mapped[int] = mapped_column(ForeignKey(Account.id))
    dst: Mapped[int] = mapped_column(ForeignKey(Account.id))
    amount: Mapped[int]


def _move(session: Session, tid: str, src: int, dst: int, amount: int) -> None:
    ids = sorted((src, dst))
    rows = {
        a.id: a
        for a in session.scalars(select(Account).where(Account.id.in_(ids)).with_for_update())
    }
    rows[src].balance -= amount
    rows[dst].balance += amount
    session.add(Transfer(id=tid, src=src, dst=dst, amount=amount))


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}  # tid -> when acknowledged (monotonic)
        self.ambiguous: set[str] = set()
        self.failed: dict[str, BaseException] = {}
        self.read_errors: list[BaseException] = []
        self.sums: list[int] = []

    def record(self, tid: str, exc: BaseException | None) -> None:
        with self.lock:
            if exc is None:
                self.acked[tid] = time.monotonic()
            elif isinstance(exc, AmbiguousResultError):
                self.ambiguous.add(tid)
            else:
                self.failed[tid] = exc


def _pick(rng: random.Random) -> tuple[str, int, int, int]:
    src, dst = rng.sample(range(ACCOUNTS), 2)
    return uuid.uuid4().hex, src, dst, rng.randint(1, 20)


def _thread_worker(Session: Any, out: Outcomes, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        tid, src, dst, amount = _pick(rng)
        try:
            poolguard.run_transaction(
                Session, functools.partial(_move, tid=tid, src=src, dst=dst, amount=amount)
            )
            out.record(tid, None)
        except Exception as exc:
            out.record(tid, exc)


def _reader(engine: Any, out: Outcomes, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with engine.connect() as conn:
                total = conn.execute(select(func.sum(Account.balance))).scalar_one()
            with out.lock:
                out.sums.append(int(total))
        except Exception as exc:
            out.read_errors.append(exc)
        time.sleep(0.005)


async def _task_worker(Session: Any, out: Outcomes, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)

    async def move(session: AsyncSession, tid: str, src: int, dst: int, amount: int) -> None:
        await session.run_sync(_move, tid, src, dst, amount)

    while not stop.is_set():
        tid, src, dst, amount = _pick(rng)
        try:
            await poolguard.run_transaction_async(
                Session, functools.partial(move, tid=tid, src=src, dst=dst, amount=amount)
            )
            out.record(tid, None)
        except Exception as exc:
            out.record(tid, exc)


def _tasks(url: str, options: dict[str, Any], out: Outcomes, stop: threading.Event) -> None:
    async def main() -> None:
        engine = poolguard.create_async_engine(url, **options)
        try:
            Session = async_sessionmaker(engine, expire_on_commit=False)
            await asyncio.gather(*(_task_worker(Session, out, stop, 100 + n) for n in range(TASKS)))
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_ledger_through_a_promotion(pg_replica_set: Any, make_engine: Any) -> None:
    rs = pg_replica_set(1)
    url = rs.multi_host_url()
    options: dict[str, Any] = {
        "connect_timeout": 1.0,
        "retry_backoff_initial": 0.02,
        "retry_backoff_max": 0.2,
        "retry_attempts": 20,
        "retry_timeout": 15,
        "query_timeout": 2,
        "pool_size": THREADS + READERS,
    }
    engine = make_engine(url, **options)
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine, expire_on_commit=False)
    with Session.begin() as session:
        session.add_all(Account(id=i, balance=START) for i in range(ACCOUNTS))

    out, stop = Outcomes(), threading.Event()
    threads = [
        threading.Thread(target=_thread_worker, args=(Session, out, stop, n))
        for n in range(THREADS)
    ]
    threads += [threading.Thread(target=_reader, args=(engine, out, stop)) for _ in range(READERS)]
    threads.append(threading.Thread(target=_tasks, args=(url, options, out, stop)))
    for t in threads:
        t.start()
    try:
        time.sleep(BEFORE)
        crashed = time.monotonic()
        rs.stop_primary(crash=True)
        rs.promote()
        promoted = time.monotonic()
        time.sleep(AFTER)
    finally:
        stop.set()
        for t in threads:
            t.join()

    with Session() as session:
        total = session.scalar(select(func.sum(Account.balance)))
        stored = set(session.scalars(select(Transfer.id)))
    assert total == ACCOUNTS * START, "money was created or destroyed"
    assert set(out.acked) <= stored, "an acknowledged transfer was lost in the failover"
    assert not set(out.failed) & stored, "a transfer reported failed was stored"
    assert stored <= set(out.acked) | out.ambiguous | set(out.failed)
    assert not out.read_errors, f"{len(out.read_errors)} reads failed: {out.read_errors[0]!r}"
    assert set(out.sums) == {ACCOUNTS * START}
    after = [t for t in out.acked.values() if t > promoted]
    assert after, "no transfer was acknowledged after the promotion"
    acks = sorted(out.acked.values())
    # Writers' outage: the longest stretch without an acknowledged transfer around the crash.
    gap = max(b - a for a, b in itertools.pairwise(acks) if b > crashed)
    print(
        f"\nfailover ledger: {len(out.acked)} acked ({len(after)} after the promotion), "
        f"{len(out.ambiguous)} ambiguous, {len(out.failed)} failed, {len(out.sums)} reads; "
        f"promote took {promoted - crashed:.2f}s; longest stretch without an acknowledged "
        f"write {gap:.2f}s; first ack after the promotion {min(after) - promoted:.3f}s later"
    )
