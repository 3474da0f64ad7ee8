"""run_transaction on MariaDB: a real deadlock (1213), lock wait timeout (1205), a KILL, and a
lost COMMIT reply (never re-applied)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker

import poolguard

pytestmark = [pytest.mark.mysql, pytest.mark.chaos]


def _accounts(engine: Any, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {name} (id int PRIMARY KEY, n int)"))
        conn.execute(text(f"DELETE FROM {name}"))
        conn.execute(text(f"INSERT INTO {name} VALUES (1, 0), (2, 0)"))


def test_real_deadlock_is_rerun_by_run_transaction(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, pool_size=2)
    _accounts(engine, "my_dead")
    barrier = threading.Barrier(2, timeout=5)
    calls = {1: 0, 2: 0}
    errors: list[BaseException] = []

    def transfer(first: int, second: int) -> None:
        def unit(conn: Any) -> None:
            calls[first] += 1
            conn.execute(text("UPDATE my_dead SET n = n + 1 WHERE id = :i"), {"i": first})
            if calls[first] == 1:
                barrier.wait()  # both hold one row lock: each now asks for the other's
            conn.execute(text("UPDATE my_dead SET n = n + 1 WHERE id = :i"), {"i": second})

        try:
            poolguard.run_transaction(engine, unit)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=transfer, args=ab) for ab in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(calls.values()) == [1, 2]  # InnoDB rolled back one victim; it ran again
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM my_dead ORDER BY id")).scalars().all() == [2, 2]
    assert poolguard.stats(engine)["retries_by_reason"].get("deadlock") == 1


def test_lock_timeout_sets_innodb_lock_wait_timeout(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, lock_timeout=1)
    _accounts(engine, "my_lockwait")
    with engine.connect() as holder:
        holder.execute(text("UPDATE my_lockwait SET n = 1 WHERE id = 1"))
        with engine.connect() as waiter, pytest.raises(sqlalchemy.exc.OperationalError) as info:
            waiter.execute(text("UPDATE my_lockwait SET n = 2 WHERE id = 1"))
        holder.rollback()
    assert info.value.orig.args[0] == 1205  # innodb_lock_wait_timeout = 1 s from lock_timeout


def test_lock_wait_timeout_is_rerun_by_run_transaction(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, lock_timeout=1)
    _accounts(engine, "my_lockwait2")
    holder = engine.connect()
    holder.execute(text("UPDATE my_lockwait2 SET n = 1 WHERE id = 1"))
    release = threading.Timer(1.5, holder.rollback)
    release.start()
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("UPDATE my_lockwait2 SET n = n + 1 WHERE id = 2"))  # earlier work
        conn.execute(text("UPDATE my_lockwait2 SET n = n + 10 WHERE id = 1"))

    try:
        poolguard.run_transaction(engine, unit)
    finally:
        release.join()
        holder.close()
    assert len(calls) == 2
    with engine.connect() as conn:
        # the first attempt's "earlier work" was rolled back, not kept next to the second's
        assert conn.execute(text("SELECT n FROM my_lockwait2 ORDER BY id")).scalars().all() == [
            10,
            1,
        ]


def test_retry_on_takes_mysql_errnos(make_engine: Any, mysql_server: Any) -> None:
    engine = make_engine(mysql_server.url, lock_timeout=1)
    _accounts(engine, "my_retry_on")
    with engine.connect() as holder:
        holder.execute(text("UPDATE my_retry_on SET n = 1 WHERE id = 1"))
        calls: list[int] = []

        def unit(conn: Any) -> None:
            calls.append(1)
            conn.execute(text("UPDATE my_retry_on SET n = 2 WHERE id = 1"))

        with pytest.raises(sqlalchemy.exc.OperationalError):
            poolguard.run_transaction(engine, unit, retry_on={1213})  # not 1205
        holder.rollback()
    assert calls == [1]


# --- a lost COMMIT reply ------------------------------------------------------------------------

_timers: list[threading.Timer] = []


def _lose_next_commit_reply(engine: Any, proxy: Any) -> None:
    """At the next COMMIT, blackhole the server→client direction: the COMMIT reaches the server
    (and is applied), its reply does not come back until 1.2 s later."""
    armed = [True]

    def on_commit(conn: Any) -> None:
        if armed.pop() if armed else False:
            proxy.blackhole("downstream")
            timer = threading.Timer(1.2, proxy.clear)
            _timers.append(timer)
            timer.start()

    event.listen(engine, "commit", on_commit)


@pytest.fixture
def ledger_proxy(
    make_engine: Any, fault_proxy: Any, mysql_server: Any
) -> Iterator[tuple[Any, Any]]:
    proxy = fault_proxy(mysql_server)
    engine = make_engine(proxy.url(mysql_server.url), query_timeout=0.5, connect_timeout=2)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS my_commit (k varchar(40) PRIMARY KEY)"))
    yield engine, proxy
    while _timers:
        _timers.pop().join()


def test_lost_commit_reply_is_ambiguous_never_reapplied(ledger_proxy: tuple[Any, Any]) -> None:
    engine, proxy = ledger_proxy
    key = uuid.uuid4().hex
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO my_commit VALUES (:k)"), {"k": key})

    _lose_next_commit_reply(engine, proxy)
    started = time.monotonic()
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        poolguard.run_transaction(engine, unit)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + 0.5 + 1.0  # query_timeout + backstop grace + slack
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert "unique key" in str(info.value)  # the MySQL hint, not PostgreSQL's resolver
    assert calls == [1]  # never re-run
    time.sleep(1.3)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM my_commit WHERE k = :k"), {"k": key})
        assert count.scalar() == 1  # the server had committed it: exactly once


async def test_async_run_transaction_reruns_a_killed_unit(
    make_async_engine: Any, mysql_server: Any
) -> None:
    import asyncio

    from .conftest import kill

    engine = make_async_engine(mysql_server.url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS my_async_tx (id int PRIMARY KEY)"))
        await conn.execute(text("DELETE FROM my_async_tx"))
    maker = async_sessionmaker(engine)
    calls: list[int] = []

    async def unit(session: Any) -> int:
        calls.append(1)
        await session.execute(text("INSERT INTO my_async_tx VALUES (:i)"), {"i": 1})
        if len(calls) == 1:
            victim = int((await session.execute(text("SELECT CONNECTION_ID()"))).scalar())
            await asyncio.get_running_loop().run_in_executor(None, kill, mysql_server, victim)
        return int((await session.execute(text("SELECT count(*) FROM my_async_tx"))).scalar())

    assert await poolguard.run_transaction_async(maker, unit) == 1
    assert calls == [1, 1]
    with pytest.raises(poolguard.ConfigError):
        await poolguard.run_transaction_async(maker, unit, resolve_ambiguous=True)
