"""The ORM ledger invariant under chaos: concurrent transfers while backends are killed.

Money is conserved; every acknowledged transfer is stored exactly once; no transfer reported
as failed is stored. Ambiguity is resolved by the server (``resolve_ambiguous=True``), so every
call ends either acknowledged or failed.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import poolguard

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

ACCOUNTS = 6
START_BALANCE = 1000
WORKERS = 4
DURATION = 4.0
KILL_EVERY = 0.15


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "pg_ledger_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Transfer(Base):
    __tablename__ = "pg_ledger_transfer"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    src: Mapped[int] = mapped_column(ForeignKey(Account.id))
    dst: Mapped[int] = mapped_column(ForeignKey(Account.id))
    amount: Mapped[int]


def _transfer(session: Session, tid: str, src: int, dst: int, amount: int) -> None:
    first, second = sorted((src, dst))  # lock in id order: fewer deadlocks, not none
    accounts = {
        a.id: a
        for a in session.scalars(
            select(Account).where(Account.id.in_((first, second))).with_for_update()
        )
    }
    accounts[src].balance -= amount
    accounts[dst].balance += amount
    session.add(Transfer(id=tid, src=src, dst=dst, amount=amount))


def test_ledger_survives_killed_backends(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(
        postgres_server.url,
        pool_size=WORKERS,
        retry_attempts=20,
        retry_timeout=10,
        query_timeout=2,
    )
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine, expire_on_commit=False)
    with Session.begin() as session:
        session.add_all(Account(id=i, balance=START_BALANCE) for i in range(ACCOUNTS))

    acked: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            tid = uuid.uuid4().hex
            src, dst = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            try:
                poolguard.run_transaction(
                    Session,
                    functools.partial(_transfer, tid=tid, src=src, dst=dst, amount=amount),
                    resolve_ambiguous=True,
                )
                acked.append(tid)
            except Exception as exc:
                failed.append((tid, exc))

    def killer() -> None:
        while not stop.is_set():
            time.sleep(KILL_EVERY)
            postgres_server.kill_connections(application_name=app_name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join()

    with Session() as session:
        total = session.scalar(select(func.sum(Account.balance)))
        stored = list(session.scalars(select(Transfer.id)))
    assert total == ACCOUNTS * START_BALANCE
    assert len(stored) == len(set(stored))
    stored_set = set(stored)
    assert set(acked) <= stored_set, "an acknowledged transfer is missing"
    assert not {tid for tid, _ in failed} & stored_set, "a failed transfer was stored"
    assert stored_set <= set(acked) | {tid for tid, _ in failed}
    snap = poolguard.stats(engine)
    assert len(acked) > 20
    assert snap["disconnects"] >= 5
    print(
        f"\nledger: {len(acked)} acked, {len(failed)} failed, "
        f"{snap['retries']} retries, {snap['disconnects']} disconnects, "
        f"resolved={ {k: v for k, v in snap.items() if 'resolved' in k} }"
    )


async def _atransfer(session: Any, tid: str, src: int, dst: int, amount: int) -> None:
    first, second = sorted((src, dst))
    rows = await session.scalars(
        select(Account).where(Account.id.in_((first, second))).with_for_update()
    )
    accounts = {a.id: a for a in rows}
    accounts[src].balance -= amount
    accounts[dst].balance += amount
    session.add(Transfer(id=tid, src=src, dst=dst, amount=amount))


@both_async_drivers
async def test_async_ledger_survives_killed_backends(
    make_async_engine: Any, postgres_server: Any, app_name: str
) -> None:
    # Tasks mix transfers (run_transaction_async, ambiguity resolved on the server) and reads,
    # breaker and budget at their defaults, while every session of the test is killed every
    # 150 ms: money is conserved, every acknowledged transfer is
    # stored exactly once, no failed one is stored.
    engine = make_async_engine(
        postgres_server.url, pool_size=WORKERS, retry_attempts=20, retry_timeout=10,
        query_timeout=2,
    )  # fmt: skip
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with Session.begin() as session:
        session.add_all(Account(id=i, balance=START_BALANCE) for i in range(ACCOUNTS))

    acked: list[str] = []
    failed: list[tuple[str, BaseException]] = []
    other_errors: list[BaseException] = []
    reads = [0]
    stop = asyncio.Event()

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            if rng.random() < 0.3:
                try:  # a read: a first statement, retried on a fresh connection
                    async with engine.connect() as conn:
                        total = (await conn.execute(select(func.sum(Account.balance)))).scalar()
                    assert total == ACCOUNTS * START_BALANCE
                    reads[0] += 1
                except Exception as exc:
                    other_errors.append(exc)
                continue
            tid = uuid.uuid4().hex
            src, dst = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            try:
                await poolguard.run_transaction_async(
                    Session,
                    functools.partial(_atransfer, tid=tid, src=src, dst=dst, amount=amount),
                    resolve_ambiguous=True,
                )
                acked.append(tid)
            except Exception as exc:
                failed.append((tid, exc))

    async def killer() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await asyncio.sleep(KILL_EVERY)
            await loop.run_in_executor(
                None, functools.partial(postgres_server.kill_connections, application_name=app_name)
            )

    tasks = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
    tasks.append(asyncio.create_task(killer()))
    await asyncio.sleep(DURATION)
    stop.set()
    await asyncio.gather(*tasks)

    async with Session() as session:
        total = await session.scalar(select(func.sum(Account.balance)))
        stored = list(await session.scalars(select(Transfer.id)))
    assert total == ACCOUNTS * START_BALANCE
    assert len(stored) == len(set(stored))
    stored_set = set(stored)
    assert set(acked) <= stored_set, "an acknowledged transfer is missing"
    assert not {tid for tid, _ in failed} & stored_set, "a failed transfer was stored"
    assert stored_set <= set(acked) | {tid for tid, _ in failed}
    assert other_errors == []
    snap = poolguard.stats(engine)
    assert len(acked) > 20
    assert reads[0] > 5
    assert snap["disconnects"] >= 5
    print(
        f"\nasync ledger: {len(acked)} acked, {len(failed)} failed, {reads[0]} reads, "
        f"{snap['retries']} retries, {snap['disconnects']} disconnects"
    )
