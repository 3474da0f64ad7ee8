"""A bank-transfer script on the SQLAlchemy ORM, made resilient by poolguard.

    DATABASE_URL=postgres://app:secret@localhost/app \
    POOLGUARD_QUERY_TIMEOUT=2s POOLGUARD_CONNECT_TIMEOUT=500ms \
    python examples/sqlalchemy_orm.py

The only poolguard lines: ``poolguard.create_engine()`` instead of ``sqlalchemy.create_engine``,
and ``poolguard.run_transaction`` around each unit of work, which re-runs it after a deadlock,
a serialization failure or a connection lost before COMMIT — and never after a lost COMMIT
reply (``resolve_ambiguous=True`` asks the server what happened instead of guessing).
"""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import poolguard


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "example_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Transfer(Base):
    __tablename__ = "example_transfer"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    src: Mapped[int] = mapped_column(ForeignKey(Account.id))
    dst: Mapped[int] = mapped_column(ForeignKey(Account.id))
    amount: Mapped[int]


def transfer(session: Session, transfer_id: str, src: int, dst: int, amount: int) -> int:
    """One unit of work: it may run more than once, so it only touches the database."""
    rows = session.scalars(
        select(Account).where(Account.id.in_(sorted((src, dst)))).with_for_update()
    )
    accounts = {account.id: account for account in rows}
    if accounts[src].balance < amount:
        raise ValueError("insufficient funds")  # not a database error: never retried
    accounts[src].balance -= amount
    accounts[dst].balance += amount
    session.add(Transfer(id=transfer_id, src=src, dst=dst, amount=amount))
    return accounts[src].balance


def main() -> None:
    engine = poolguard.create_engine()  # DATABASE_URL + POOLGUARD_* from the environment
    SessionLocal = sessionmaker(engine, expire_on_commit=False)
    Base.metadata.create_all(engine)

    def seed(session: Session) -> None:
        for account_id in (1, 2):
            if session.get(Account, account_id) is None:
                session.add(Account(id=account_id, balance=100))

    poolguard.run_transaction(SessionLocal, seed)

    with poolguard.deadline(5.0):  # the whole call, retries included, ends within 5 s
        left = poolguard.run_transaction(
            SessionLocal,
            lambda s: transfer(s, uuid.uuid4().hex, 1, 2, 10),
            resolve_ambiguous=True,
        )
    print(f"account 1 now holds {left}")

    with SessionLocal() as session:  # plain sessions work unchanged (reads retried when safe)
        total = session.scalar(select(func.sum(Account.balance)))
    print(f"total money: {total}")
    print("pool:", poolguard.stats(engine))
    engine.dispose()


if __name__ == "__main__":
    main()
