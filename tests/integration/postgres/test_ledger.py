"""The ORM ledger invariant under chaos: concurrent transfers while backends are killed.

Money is conserved; every acknowledged transfer is stored exactly once; no transfer reported
as failed is stored. Ambiguity is resolved by the server (``resolve_ambiguous=True``), so every
call ends either acknowledged or failed.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import poolguard

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
