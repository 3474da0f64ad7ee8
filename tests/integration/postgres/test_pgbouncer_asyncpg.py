"""asyncpg behind PgBouncer (transaction pooling): no "prepared statement already exists".

asyncpg prepares every statement, named ``__asyncpg_stmt_N__`` per connection, and caches it;
behind transaction pooling the next transaction may run on a server connection where another
client already prepared that name (``DuplicatePreparedStatementError``), or where the cached
statement does not exist. The PgBouncer-safe mode turns asyncpg's and SQLAlchemy's caches off
and names each prepared statement uniquely (``prepared_statement_name_func``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.pgbouncer]

TASKS = 12
ROUNDS = 20


async def _many_tasks(engine: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    async def work(n: int) -> None:
        try:
            for i in range(ROUNDS):
                async with engine.begin() as conn:
                    value = (
                        await conn.execute(text("SELECT CAST(:a AS int) + :b"), {"a": n, "b": i})
                    ).scalar()
                    assert value == n + i
                    await conn.execute(text("SELECT 1"))  # the same text from every client
        except Exception as exc:
            errors.append(exc)

    await asyncio.gather(*(work(n) for n in range(TASKS)))
    return errors


async def test_concurrent_tasks_share_server_connections_without_statement_clashes(
    make_async_engine: Any, pgbouncer_server: Any
) -> None:
    engine = make_async_engine(
        pgbouncer_server.url, async_driver="asyncpg", pgbouncer="on", pool_size=TASKS,
        query_timeout=2,
    )  # fmt: skip
    assert await _many_tasks(engine) == []
    async with engine.connect() as conn:  # the timeout went in with SET LOCAL
        assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "2s"


async def test_without_the_safe_mode_asyncpg_clashes(
    make_async_engine: Any, pgbouncer_server: Any
) -> None:
    # The failure the safe mode prevents, on the same PgBouncer (what a plain engine meets).
    engine = make_async_engine(
        pgbouncer_server.url, async_driver="asyncpg", pgbouncer="off", pool_size=TASKS
    )
    errors = await _many_tasks(engine)
    assert errors, "expected prepared-statement clashes without the PgBouncer-safe mode"
    assert any("prepared statement" in str(e) for e in errors), errors[:3]


async def test_auto_detects_pgbouncer_from_the_url(
    make_async_engine: Any, pgbouncer_server: Any
) -> None:
    url = pgbouncer_server.url + ("&" if "?" in pgbouncer_server.url else "?") + "pgbouncer=true"
    engine = make_async_engine(url, async_driver="asyncpg", pool_size=4)
    from poolguard.integrations.sqlalchemy.engine import guard_of

    assert guard_of(engine).pgbouncer
    assert await _many_tasks(engine) == []
    assert poolguard.stats(engine)["give_ups"] == 0


def test_auto_detection_from_the_url_with_psycopg(make_engine: Any, pgbouncer_server: Any) -> None:
    # The marker is poolguard's: psycopg refused it ('invalid connection option "pgbouncer"').
    url = pgbouncer_server.url + ("&" if "?" in pgbouncer_server.url else "?") + "pgbouncer=true"
    engine = make_engine(url, query_timeout=2)
    from poolguard.integrations.sqlalchemy.engine import guard_of

    assert guard_of(engine).pgbouncer
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2s"  # SET LOCAL
