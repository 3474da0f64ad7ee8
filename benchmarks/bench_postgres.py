"""PostgreSQL: poolguard vs plain SQLAlchemy, SQLAlchemy + pre_ping, psycopg_pool and raw psycopg.

Workloads (sync and asyncio, alternating rounds in one run, medians, ratios vs plain SQLAlchemy):
  - a small read: ORM ``session.get(Item, 1)`` for SQLAlchemy, a parameterized row read for psycopg;
  - behaviour (own server only): a restart with downtime during a stream of reads (errors
    surfaced), and a frozen server (SIGSTOP) with a 0.5 s statement timeout (how long one call
    hangs). Measured and printed, not asserted.

checkout + ``SELECT 1`` + return, 32 threads / 200 tasks on a pool of 8 and the round trips per
request are measured by ``benchmarks/run_all.py`` (``make bench``), which builds its contenders
with this module's builders.

Targets (DESIGN "anchors"): ``poolguard.create_engine`` <= 1.0x plain SQLAlchemy, <= 0.75x
SQLAlchemy with ``pool_pre_ping``.

    python benchmarks/bench_postgres.py [--quick] [--ops N] [--rounds R] [--no-behaviour]

Uses ``DATABASE_URL`` when set (the behaviour section then is skipped: it restarts and freezes
the server), else starts a throwaway server with ``poolguard.testing.PostgresServer``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import sqlalchemy
from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    alternate_async,
    alternate_sync,
    print_table,
)

import poolguard
import poolguard.postgres

POOL = 8
ANCHOR = "sqlalchemy"
PRE_PING = "sqlalchemy+pre_ping"
PG_ENGINE = "poolguard.create_engine"
TARGET_VS_PLAIN = 1.0
TARGET_VS_PRE_PING = 0.75
SELECT_1 = text("SELECT 1")
ROW_SQL = "SELECT id, name FROM bench_item WHERE id = %s"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@dataclass
class Profile:
    ops: int
    rounds: int
    downtime: float
    freeze: float


FULL = Profile(ops=200, rounds=9, downtime=1.0, freeze=2.0)
QUICK = Profile(ops=60, rounds=3, downtime=0.5, freeze=1.5)


def conninfo(url: str) -> str:
    """libpq form of a SQLAlchemy/12-factor URL."""
    return "postgresql://" + url.split("://", 1)[1]


def sa_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


# --- building the contenders (benchmarks/run_all.py builds its contenders here too) ----------

SIZES = {"pool_size": POOL, "max_overflow": 0}


def sa_engine(url: str, **kw: Any) -> sqlalchemy.Engine:
    """Plain SQLAlchemy (QueuePool of ``POOL``, no overflow) on psycopg."""
    return sqlalchemy.create_engine(sa_url(url), **SIZES, **kw)


def guarded_engine(url: str, **kw: Any) -> sqlalchemy.Engine:
    return poolguard.create_engine(url, **SIZES, **kw)


def sa_async_engine(url: str, **kw: Any) -> Any:
    return create_async_engine(sa_url(url), **SIZES, **kw)


def guarded_async_engine(url: str, **kw: Any) -> Any:
    return poolguard.create_async_engine(url, **SIZES, **kw)


def plain_pool(url: str) -> psycopg_pool.ConnectionPool[Any]:
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo(url), min_size=POOL, max_size=POOL, open=True
    )
    pool.wait()
    return pool


def guarded_pool(url: str, **kw: Any) -> poolguard.postgres.GuardedConnectionPool:
    pool = poolguard.postgres.create_pool(url, **SIZES, **kw)
    pool.wait()
    return pool


async def plain_async_pool(url: str) -> psycopg_pool.AsyncConnectionPool[Any]:
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        conninfo(url), min_size=POOL, max_size=POOL, open=False
    )
    await pool.open(wait=True)
    return pool


async def guarded_async_pool(url: str, **kw: Any) -> Any:
    pool = poolguard.postgres.create_async_pool(url, **SIZES, **kw)
    await pool.open(wait=True)
    return pool


def sync_engines(url: str) -> dict[str, sqlalchemy.Engine]:
    return {
        ANCHOR: sa_engine(url),
        PRE_PING: sa_engine(url, pool_pre_ping=True),
        PG_ENGINE: guarded_engine(url),
    }


def async_engines(url: str) -> dict[str, Any]:
    return {
        ANCHOR: sa_async_engine(url),
        PRE_PING: sa_async_engine(url, pool_pre_ping=True),
        "poolguard.create_async_engine": guarded_async_engine(url),
    }


# --- a small read, single caller ---------------------------------------------------------------
# checkout + SELECT 1 + return, the 32-threads and 200-tasks loads and the round trips are in
# benchmarks/run_all.py (``make bench``); this is the ORM/row read on top.


def bench_sync(url: str, p: Profile) -> None:
    engines = sync_engines(url)
    pools = {"psycopg_pool": plain_pool(url), "poolguard.postgres": guarded_pool(url)}
    raw = psycopg.connect(conninfo(url), autocommit=True)
    guarded = pools["poolguard.postgres"]
    assert isinstance(guarded, poolguard.postgres.GuardedConnectionPool)

    def sa_orm(engine: sqlalchemy.Engine) -> Callable[[], object]:
        def op() -> object:
            with Session(engine) as s:
                return s.get(Item, 1)

        return op

    def pool_row(pool: psycopg_pool.ConnectionPool[Any]) -> Callable[[], object]:
        def op() -> object:
            with pool.connection() as c:
                return c.execute(ROW_SQL, (1,)).fetchone()

        return op

    variants: dict[str, Callable[[], object]] = {n: sa_orm(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_row(pl) for n, pl in pools.items()}
    variants["poolguard.postgres fetchone()"] = lambda: guarded.fetchone(ROW_SQL, (1,))
    variants["raw psycopg (1 conn, autocommit)"] = lambda: raw.execute(ROW_SQL, (1,)).fetchone()
    results = print_table(
        "sync: small read (ORM session.get for SQLAlchemy; row by primary key for psycopg)",
        alternate_sync(variants, p.ops, p.rounds),
        ANCHOR,
    )
    check_targets(results, PG_ENGINE)
    raw.close()
    for engine in engines.values():
        engine.dispose()
    for pool in pools.values():
        pool.close()


async def bench_async(url: str, p: Profile) -> None:
    engines = async_engines(url)
    pools = {
        "psycopg_pool": await plain_async_pool(url),
        "poolguard.postgres": await guarded_async_pool(url),
    }
    guarded = pools["poolguard.postgres"]

    def sa_orm(engine: Any) -> Callable[[], Any]:
        async def op() -> object:
            async with AsyncSession(engine) as s:
                return await s.get(Item, 1)

        return op

    def pool_row(pool: Any) -> Callable[[], Any]:
        async def op() -> object:
            async with pool.connection() as c:
                return await (await c.execute(ROW_SQL, (1,))).fetchone()

        return op

    variants: dict[str, Callable[[], Any]] = {n: sa_orm(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_row(pl) for n, pl in pools.items()}
    variants["poolguard.postgres fetchone()"] = lambda: guarded.fetchone(ROW_SQL, (1,))
    results = print_table(
        "async: small read (ORM get / row by primary key)",
        await alternate_async(variants, p.ops, p.rounds),
        ANCHOR,
    )
    check_targets(results, "poolguard.create_async_engine")
    for engine in engines.values():
        await engine.dispose()
    for pool in pools.values():
        await pool.close()


def check_targets(results: tuple[dict[str, float], dict[str, float]], ours: str) -> None:
    for label, values in zip(("wall", "CPU"), results, strict=True):
        vs_plain = values[ours] / values[ANCHOR]
        vs_ping = values[ours] / values[PRE_PING]
        ok = vs_plain <= TARGET_VS_PLAIN and vs_ping <= TARGET_VS_PRE_PING
        print(
            f"  -> {ours} ({label}): {vs_plain:.2f}x plain (target <= {TARGET_VS_PLAIN}),"
            f" {vs_ping:.2f}x pre_ping (target <= {TARGET_VS_PRE_PING}):"
            f" {'OK' if ok else 'MISSED'}"
        )


# --- behaviour under faults (own server only) ---------------------------------------------------


def _readers(url: str) -> dict[str, Callable[[], object]]:
    """One ``SELECT 1`` per call through each contender (pools of 2, library defaults)."""
    small = {"pool_size": 2, "max_overflow": 0}
    plain = sqlalchemy.create_engine(sa_url(url), **small)
    ping = sqlalchemy.create_engine(sa_url(url), pool_pre_ping=True, **small)
    guarded = poolguard.create_engine(url, **small)
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo(url), min_size=2, max_size=2, open=True
    )
    native = poolguard.postgres.create_pool(url, **small)

    def sa(engine: sqlalchemy.Engine) -> Callable[[], object]:
        def op() -> object:
            with engine.connect() as c:
                return c.execute(SELECT_1).scalar()

        return op

    def pp() -> object:
        with pool.connection() as c:
            return c.execute("SELECT 1").fetchone()

    return {
        ANCHOR: sa(plain),
        PRE_PING: sa(ping),
        PG_ENGINE: sa(guarded),
        "psycopg_pool": pp,
        "poolguard.postgres fetchval()": lambda: native.fetchval("SELECT 1"),
    }


def bench_restart(server: Any, p: Profile) -> None:
    readers = _readers(server.url)
    stop = threading.Event()
    ok = dict.fromkeys(readers, 0)
    errors: dict[str, list[str]] = {n: [] for n in readers}

    def loop(name: str) -> None:
        while not stop.is_set():
            try:
                readers[name]()
                ok[name] += 1
            except Exception as exc:
                errors[name].append(type(exc).__name__)
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(n,)) for n in readers]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.restart(downtime=p.downtime)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    print(f"\nbehaviour: server restart with {p.downtime:.1f}s downtime during a stream of reads")
    print(f"  {'variant':<34} {'ok':>6} {'errors':>7}  errors by type")
    for name in readers:
        kinds = ", ".join(f"{k} x{n}" for k, n in Counter(errors[name]).most_common(3)) or "-"
        print(f"  {name:<34} {ok[name]:>6} {len(errors[name]):>7}  {kinds}")


def bench_freeze(server: Any, p: Profile) -> None:
    timeout = {"options": "-c statement_timeout=500"}
    small = {"pool_size": 1, "max_overflow": 0}
    plain = sqlalchemy.create_engine(sa_url(server.url), connect_args=timeout, **small)
    ping = sqlalchemy.create_engine(
        sa_url(server.url), connect_args=timeout, pool_pre_ping=True, **small
    )
    guarded = poolguard.create_engine(server.url, query_timeout=0.5, **small)
    native = poolguard.postgres.create_pool(server.url, query_timeout=0.5, **small)

    def sa(engine: sqlalchemy.Engine) -> Callable[[], object]:
        def op() -> object:
            with engine.connect() as c:
                return c.execute(SELECT_1).scalar()

        return op

    calls: dict[str, Callable[[], object]] = {
        ANCHOR + " (statement_timeout 0.5s)": sa(plain),
        PRE_PING + " (statement_timeout 0.5s)": sa(ping),
        PG_ENGINE + " (query_timeout 0.5s)": sa(guarded),
        "poolguard.postgres (query_timeout 0.5s)": lambda: native.fetchval("SELECT 1"),
    }
    for call in calls.values():
        call()  # warm: one idle connection each, just used
    outcome: dict[str, tuple[float, str]] = {}

    def run(name: str) -> None:
        t0 = time.monotonic()
        try:
            calls[name]()
            what = "ok"
        except Exception as exc:
            what = type(exc).__name__
        outcome[name] = (time.monotonic() - t0, what)

    server.freeze()
    threads = [threading.Thread(target=run, args=(n,)) for n in calls]
    try:
        for t in threads:
            t.start()
        time.sleep(p.freeze)
    finally:
        server.thaw()
    for t in threads:
        t.join()
    print(f"\nbehaviour: server frozen (SIGSTOP) for {p.freeze:.1f}s, one SELECT 1 each")
    print(f"  {'variant':<48} {'returned after':>14}  outcome")
    for name in calls:
        seconds, what = outcome[name]
        print(f"  {name:<48} {seconds:>13.2f}s  {what}")
    for engine in (plain, ping, guarded):
        engine.dispose()
    native.close()


# --- main ------------------------------------------------------------------------------------


def prepare(url: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_item")
        conn.execute("CREATE TABLE bench_item (id int PRIMARY KEY, name varchar(50))")
        conn.execute("INSERT INTO bench_item VALUES (1, 'one')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~20 s instead of ~2 min")
    parser.add_argument("--ops", type=int, help="operations per round")
    parser.add_argument("--rounds", type=int, help="alternating rounds")
    parser.add_argument("--no-behaviour", action="store_true", help="skip restart/freeze")
    args = parser.parse_args()
    # Reconnect warnings from psycopg_pool and poolguard would drown the tables.
    for name in ("psycopg", "poolguard", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    p = QUICK if args.quick else FULL
    p = Profile(args.ops or p.ops, args.rounds or p.rounds, *list(vars(p).values())[2:])
    started = time.monotonic()
    with ExitStack() as stack:
        url = os.environ.get("DATABASE_URL")
        server = None
        if not url:
            from poolguard.testing import PostgresServer

            server = stack.enter_context(PostgresServer())
            url = server.url
        prepare(url)
        print(f"PostgreSQL benchmark: {p.ops} ops x {p.rounds} alternating rounds per variant")
        bench_sync(url, p)
        asyncio.run(bench_async(url, p))
        if server is not None and not args.no_behaviour:
            bench_restart(server, p)
            bench_freeze(server, p)
    print(f"\n(total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
