"""The asyncio flavour: ``poolguard.create_async_engine()`` + ``async_sessionmaker``.

    DATABASE_URL=postgres://app:secret@localhost/app POOLGUARD_QUERY_TIMEOUT=2s \
    python examples/sqlalchemy_async.py

A frozen or unreachable server cannot hold ``await`` past its deadline: poolguard's backstop
cuts the socket (psycopg's own cancellation would wait ~11 s for the server).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import poolguard


async def count_tables(session: AsyncSession) -> int:
    result = await session.execute(
        text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
    )
    return int(result.scalar_one())


async def main() -> None:
    engine = poolguard.create_async_engine()
    Session = async_sessionmaker(engine)
    try:
        async with poolguard.deadline(3.0):
            tables = await poolguard.run_transaction_async(Session, count_tables)
        print(f"{tables} tables in schema public")
        async with Session() as session:  # a plain session: first-statement reads are retried
            print("server time:", (await session.execute(text("SELECT now()"))).scalar())
    except poolguard.QueryTimeout as exc:  # also sqlalchemy.exc.OperationalError
        print(f"database too slow: {exc}")
    finally:
        print("pool:", poolguard.stats(engine))
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
