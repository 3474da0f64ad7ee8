"""run_transaction under real conflicts (40001, 40P01) and lost COMMIT replies."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

import poolguard

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def _table(engine: Any, ddl: str, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(text(ddl))


def test_deadlocks_are_retried(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, retry_attempts=5)
    _table(engine, "CREATE TABLE pg_dl (id int PRIMARY KEY, v int)", "pg_dl")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pg_dl VALUES (1, 0), (2, 0)"))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(first: int, second: int) -> None:
        def unit(conn: Any) -> None:
            conn.execute(text("UPDATE pg_dl SET v = v + 1 WHERE id = :i"), {"i": first})
            try:
                barrier.wait(timeout=2)  # both hold their first lock: a real deadlock
            except threading.BrokenBarrierError:
                pass  # retried attempt: the other side is gone
            conn.execute(text("UPDATE pg_dl SET v = v + 1 WHERE id = :i"), {"i": second})

        try:
            poolguard.run_transaction(engine, unit)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=a) for a in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(v) FROM pg_dl")).scalar() == 4
    assert poolguard.stats(engine)["retries_by_reason"]["deadlock_detected"] >= 1


def test_serialization_failures_are_retried(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, retry_attempts=10, pool_size=4)
    _table(
        engine, "CREATE TABLE pg_ser (id serial PRIMARY KEY, doctor text, on_call bool)", "pg_ser"
    )
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pg_ser (doctor, on_call) VALUES ('a', true), ('b', true)"))
    Session = sessionmaker(engine.execution_options(isolation_level="SERIALIZABLE"))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def go_off_call(doctor: str) -> None:
        # classic write skew: each checks "someone else is on call", then goes off call
        def unit(session: Any) -> None:
            on_call = session.execute(text("SELECT count(*) FROM pg_ser WHERE on_call")).scalar()
            try:
                barrier.wait(timeout=2)
            except threading.BrokenBarrierError:
                pass
            if on_call >= 2:
                session.execute(
                    text("UPDATE pg_ser SET on_call = false WHERE doctor = :d"), {"d": doctor}
                )

        try:
            poolguard.run_transaction(Session, unit)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=go_off_call, args=(d,)) for d in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:  # the invariant holds: someone is still on call
        assert conn.execute(text("SELECT count(*) FROM pg_ser WHERE on_call")).scalar() == 1
    assert poolguard.stats(engine)["retries_by_reason"]["serialization_failure"] >= 1


def test_retry_on_is_configurable(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url)
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        poolguard.run_transaction(engine, unit, retry_on=())
    assert calls == [1]
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        poolguard.run_transaction(engine, unit, attempts=2)
    assert calls == [1, 1]


_timers: list[threading.Timer] = []


def _lose_next_commit_reply(
    engine: Any, proxy: Any, direction: str = "downstream", *, drop: bool = False
) -> None:
    """At the next COMMIT, blackhole the proxy so the reply (or the COMMIT) is lost.

    The blackhole is lifted 1.2 s later, after the backstop cut (0.5 + 0.5 s); held bytes then
    flow on, unless ``drop``: then every link is reset first, so a held COMMIT never arrives.
    """
    armed = [True]

    def lift() -> None:
        if drop:
            proxy.reset()
        proxy.clear()

    def on_commit(conn: Any) -> None:
        if armed.pop() if armed else False:
            proxy.blackhole(direction)
            timer = threading.Timer(1.2, lift)
            _timers.append(timer)
            timer.start()

    event.listen(engine, "commit", on_commit)


@pytest.fixture
def ledger_proxy(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> Iterator[tuple[Any, Any]]:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), query_timeout=0.5, connect_timeout=2)
    _table(engine, "CREATE TABLE IF NOT EXISTS pg_commit (k text PRIMARY KEY)", "pg_commit")
    yield engine, proxy
    while _timers:
        _timers.pop().join()


def _count(engine: Any, key: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM pg_commit WHERE k = :k"), {"k": key}).scalar()
        )


def test_lost_commit_reply_is_ambiguous_never_reapplied(ledger_proxy: tuple[Any, Any]) -> None:
    engine, proxy = ledger_proxy
    key = uuid.uuid4().hex
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO pg_commit VALUES (:k)"), {"k": key})

    _lose_next_commit_reply(engine, proxy)
    started = time.monotonic()
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        poolguard.run_transaction(engine, unit)
    assert time.monotonic() - started < 0.5 + 0.5 + 1.0
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert calls == [1]  # never re-run
    time.sleep(1.3)
    assert _count(engine, key) == 1  # the server had committed it: exactly once


def test_lost_commit_reply_resolved_as_committed(ledger_proxy: tuple[Any, Any]) -> None:
    engine, proxy = ledger_proxy
    key = uuid.uuid4().hex
    calls: list[int] = []

    def unit(conn: Any) -> str:
        calls.append(1)
        conn.execute(text("INSERT INTO pg_commit VALUES (:k)"), {"k": key})
        return "done"

    _lose_next_commit_reply(engine, proxy)
    assert poolguard.run_transaction(engine, unit, resolve_ambiguous=True) == "done"
    assert calls == [1]
    assert _count(engine, key) == 1
    assert poolguard.stats(engine)["ambiguous"] == 1


def test_lost_commit_request_resolved_as_aborted_and_rerun(ledger_proxy: tuple[Any, Any]) -> None:
    engine, proxy = ledger_proxy
    key = uuid.uuid4().hex
    calls: list[int] = []

    def unit(conn: Any) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO pg_commit VALUES (:k)"), {"k": key})

    _lose_next_commit_reply(engine, proxy, direction="upstream", drop=True)  # COMMIT is lost
    poolguard.run_transaction(engine, unit, resolve_ambiguous=True)
    assert _count(engine, key) == 1  # the aborted attempt left nothing; the re-run committed
    assert len(calls) == 2
    snap = poolguard.stats(engine)
    assert snap["ambiguous"] == 1
    assert snap["ambiguous_resolved"] == {"committed": 0, "aborted": 1}


@both_async_drivers
async def test_async_run_transaction_retries_a_killed_unit(
    make_async_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_async_engine(postgres_server.url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS pg_async_u"))
        await conn.execute(text("CREATE TABLE pg_async_u (id int PRIMARY KEY)"))
    Session = async_sessionmaker(engine)
    runs: list[int] = []

    async def unit(session: Any) -> int:
        runs.append(1)
        await session.execute(text("INSERT INTO pg_async_u VALUES (1)"))
        if len(runs) == 1:
            postgres_server.kill_connections(application_name=app_name)
        return int((await session.execute(text("SELECT count(*) FROM pg_async_u"))).scalar())

    assert await poolguard.run_transaction_async(Session, unit) == 1
    assert len(runs) == 2


@both_async_drivers
async def test_async_lost_commit_reply_resolved(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), query_timeout=0.5)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS pg_commit (k text PRIMARY KEY)"))
    _lose_next_commit_reply(engine.sync_engine, proxy)
    key = uuid.uuid4().hex
    calls: list[int] = []

    async def unit(session: Any) -> str:
        calls.append(1)
        await session.execute(text("INSERT INTO pg_commit VALUES (:k)"), {"k": key})
        return "ok"

    Session = async_sessionmaker(engine)
    assert await poolguard.run_transaction_async(Session, unit, resolve_ambiguous=True) == "ok"
    assert calls == [1]
    async with engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM pg_commit WHERE k = :k"), {"k": key})
        assert count.scalar() == 1
    while _timers:
        _timers.pop().join()


@both_async_drivers
async def test_async_deadlocks_are_retried(make_async_engine: Any, postgres_server: Any) -> None:
    engine = make_async_engine(postgres_server.url, retry_attempts=5)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS pg_adl"))
        await conn.execute(text("CREATE TABLE pg_adl (id int PRIMARY KEY, v int)"))
        await conn.execute(text("INSERT INTO pg_adl VALUES (1, 0), (2, 0)"))
    Session = async_sessionmaker(engine)
    arrived = [0]
    both_hold_one = asyncio.Event()  # (asyncio.Barrier is Python >= 3.11)

    async def worker(first: int, second: int) -> None:
        async def unit(session: Any) -> None:
            await session.execute(text("UPDATE pg_adl SET v = v + 1 WHERE id = :i"), {"i": first})
            arrived[0] += 1
            if arrived[0] >= 2:
                both_hold_one.set()
            with contextlib.suppress(asyncio.TimeoutError):
                # both hold their first lock: a real deadlock (a re-run goes straight on)
                await asyncio.wait_for(both_hold_one.wait(), 2)
            await session.execute(text("UPDATE pg_adl SET v = v + 1 WHERE id = :i"), {"i": second})

        await poolguard.run_transaction_async(Session, unit)

    await asyncio.gather(worker(1, 2), worker(2, 1))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT sum(v) FROM pg_adl"))).scalar() == 4
    assert poolguard.stats(engine)["retries_by_reason"]["deadlock_detected"] >= 1


@both_async_drivers
async def test_async_lost_commit_reply_is_ambiguous_never_reapplied(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url), query_timeout=0.5)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS pg_commit (k text PRIMARY KEY)"))
    _lose_next_commit_reply(engine.sync_engine, proxy)
    key = uuid.uuid4().hex
    calls: list[int] = []

    async def unit(session: Any) -> None:
        calls.append(1)
        await session.execute(text("INSERT INTO pg_commit VALUES (:k)"), {"k": key})

    started = time.monotonic()
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        await poolguard.run_transaction_async(async_sessionmaker(engine), unit)
    assert time.monotonic() - started < 0.5 + 0.5 + 1.0  # the backstop, not a hang
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert calls == [1]  # never re-run
    while _timers:
        _timers.pop().join()  # the held COMMIT reaches the server
    async with engine.connect() as conn:
        count = await conn.execute(text("SELECT count(*) FROM pg_commit WHERE k = :k"), {"k": key})
        assert count.scalar() == 1  # the server had committed it: exactly once
