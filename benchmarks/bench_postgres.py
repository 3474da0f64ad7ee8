"""PostgreSQL: poolguard vs plain SQLAlchemy, SQLAlchemy + pre_ping, psycopg_pool and raw psycopg.

Workloads (sync and asyncio, alternating rounds in one run, medians, ratios vs plain SQLAlchemy):
  - checkout + ``SELECT 1`` + return;
  - a small read: ORM ``session.get(Item, 1)`` for SQLAlchemy, a parameterized row read for psycopg;
  - 32 threads on a pool of 8: throughput and p50/p99 acquire wait;
  - behaviour (own server only): a restart with downtime during a stream of reads (errors
    surfaced), and a frozen server (SIGSTOP) with a 0.5 s statement timeout (how long one call
    hangs). Measured and printed, not asserted.

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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
    percentile,
    print_table,
)

import poolguard
import poolguard.postgres

POOL = 8
THREADS = 32
ANCHOR = "sqlalchemy"
PRE_PING = "sqlalchemy+pre_ping"
PG_ENGINE = "poolguard.create_engine"
TARGET_VS_PLAIN = 1.0
TARGET_VS_PRE_PING = 0.75
SELECT_1 = text("SELECT 1")
BACKSTOPPED = "poolguard.postgres connection(), query_timeout"
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
    threads_seconds: float
    threads_rounds: int
    downtime: float
    freeze: float


FULL = Profile(ops=200, rounds=9, threads_seconds=1.0, threads_rounds=3, downtime=1.0, freeze=2.0)
QUICK = Profile(ops=60, rounds=3, threads_seconds=0.5, threads_rounds=1, downtime=0.5, freeze=1.5)


def conninfo(url: str) -> str:
    """libpq form of a SQLAlchemy/12-factor URL."""
    return "postgresql://" + url.split("://", 1)[1]


def sa_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


# --- building the contenders -------------------------------------------------------------------


def sync_engines(url: str, **extra: Any) -> dict[str, sqlalchemy.Engine]:
    sizes = {"pool_size": POOL, "max_overflow": 0}
    return {
        ANCHOR: sqlalchemy.create_engine(sa_url(url), **sizes, **extra),
        PRE_PING: sqlalchemy.create_engine(sa_url(url), pool_pre_ping=True, **sizes, **extra),
        PG_ENGINE: poolguard.create_engine(url, **sizes, **extra),
    }


def sync_pools(url: str) -> dict[str, psycopg_pool.ConnectionPool[Any]]:
    plain: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        conninfo(url), min_size=POOL, max_size=POOL, open=True
    )
    guarded = poolguard.postgres.create_pool(url, pool_size=POOL, max_overflow=0)
    plain.wait()
    guarded.wait()
    return {"psycopg_pool": plain, "poolguard.postgres": guarded}


def backstopped_pool(url: str) -> poolguard.postgres.GuardedConnectionPool:
    """With a query timeout every wait on the socket arms the watchdog: what does it cost?"""
    pool = poolguard.postgres.create_pool(url, pool_size=POOL, max_overflow=0, query_timeout=5)
    pool.wait()
    return pool


def async_engines(url: str) -> dict[str, Any]:
    sizes = {"pool_size": POOL, "max_overflow": 0}
    return {
        ANCHOR: create_async_engine(sa_url(url), **sizes),
        PRE_PING: create_async_engine(sa_url(url), pool_pre_ping=True, **sizes),
        "poolguard.create_async_engine": poolguard.create_async_engine(url, **sizes),
    }


async def async_pools(url: str) -> dict[str, Any]:
    plain: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        conninfo(url), min_size=POOL, max_size=POOL, open=False
    )
    guarded = poolguard.postgres.create_async_pool(url, pool_size=POOL, max_overflow=0)
    await plain.open(wait=True)
    await guarded.open(wait=True)
    return {"psycopg_pool": plain, "poolguard.postgres": guarded}


# --- single-caller workloads -----------------------------------------------------------------


def bench_sync(url: str, p: Profile) -> None:
    engines = sync_engines(url)
    pools = sync_pools(url)
    raw = psycopg.connect(conninfo(url), autocommit=True)
    guarded = pools["poolguard.postgres"]
    assert isinstance(guarded, poolguard.postgres.GuardedConnectionPool)

    def sa_select(engine: sqlalchemy.Engine) -> Callable[[], object]:
        def op() -> object:
            with engine.connect() as c:
                return c.execute(SELECT_1).scalar()

        return op

    def pool_select(pool: psycopg_pool.ConnectionPool[Any]) -> Callable[[], object]:
        def op() -> object:
            with pool.connection() as c:
                return c.execute("SELECT 1").fetchone()

        return op

    variants: dict[str, Callable[[], object]] = {n: sa_select(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_select(pl) for n, pl in pools.items()}
    backstopped = backstopped_pool(url)
    variants[BACKSTOPPED] = pool_select(backstopped)
    variants["poolguard.postgres fetchval()"] = lambda: guarded.fetchval("SELECT 1")
    variants["raw psycopg (1 conn, autocommit)"] = lambda: raw.execute("SELECT 1").fetchone()
    results = print_table(
        "sync: checkout + SELECT 1 + return",
        alternate_sync(variants, p.ops, p.rounds),
        ANCHOR,
        notes=ROUND_TRIPS_SELECT,
    )
    check_targets(results, PG_ENGINE)

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

    variants = {n: sa_orm(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_row(pl) for n, pl in pools.items()}
    variants["poolguard.postgres fetchone()"] = lambda: guarded.fetchone(ROW_SQL, (1,))
    variants["raw psycopg (1 conn, autocommit)"] = lambda: raw.execute(ROW_SQL, (1,)).fetchone()
    results = print_table(
        "sync: small read (ORM session.get for SQLAlchemy; row by primary key for psycopg)",
        alternate_sync(variants, p.ops, p.rounds),
        ANCHOR,
    )
    check_targets(results, PG_ENGINE)
    bench_threads(engines, pools, p)
    raw.close()
    backstopped.close()
    for engine in engines.values():
        engine.dispose()
    for pool in pools.values():
        pool.close()


ROUND_TRIPS_SELECT = {
    ANCHOR: "3 round trips (BEGIN, SELECT, ROLLBACK)",
    PRE_PING: "4 (+ ping)",
    PG_ENGINE: "3 (+ ping only after 1 s idle)",
    "poolguard.create_async_engine": "3 (+ ping only after 1 s idle)",
    "psycopg_pool connection()": "3 (BEGIN, SELECT, COMMIT)",
    "poolguard.postgres connection()": "3",
    "poolguard.postgres connection(), query_timeout": "3, watchdog armed on each",
    "poolguard.postgres fetchval()": "1 (autocommit)",
    "raw psycopg (1 conn, autocommit)": "1, no pool",
}


async def bench_async(url: str, p: Profile) -> None:
    engines = async_engines(url)
    pools = await async_pools(url)
    raw = await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True)
    guarded = pools["poolguard.postgres"]

    def sa_select(engine: Any) -> Callable[[], Any]:
        async def op() -> object:
            async with engine.connect() as c:
                return (await c.execute(SELECT_1)).scalar()

        return op

    def pool_select(pool: Any) -> Callable[[], Any]:
        async def op() -> object:
            async with pool.connection() as c:
                return await (await c.execute("SELECT 1")).fetchone()

        return op

    async def raw_select() -> object:
        return await (await raw.execute("SELECT 1")).fetchone()

    variants: dict[str, Callable[[], Any]] = {n: sa_select(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_select(pl) for n, pl in pools.items()}
    variants["poolguard.postgres fetchval()"] = lambda: guarded.fetchval("SELECT 1")
    variants["raw psycopg (1 conn, autocommit)"] = raw_select
    results = print_table(
        "async: checkout + SELECT 1 + return",
        await alternate_async(variants, p.ops, p.rounds),
        ANCHOR,
        notes=ROUND_TRIPS_SELECT,
    )
    check_targets(results, "poolguard.create_async_engine")

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

    variants = {n: sa_orm(e) for n, e in engines.items()}
    variants |= {f"{n} connection()": pool_row(pl) for n, pl in pools.items()}
    variants["poolguard.postgres fetchone()"] = lambda: guarded.fetchone(ROW_SQL, (1,))
    results = print_table(
        "async: small read (ORM get / row by primary key)",
        await alternate_async(variants, p.ops, p.rounds),
        ANCHOR,
    )
    check_targets(results, "poolguard.create_async_engine")
    await raw.close()
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


# --- 32 threads on a pool of 8 -----------------------------------------------------------------


@contextmanager
def _sa_checkout(engine: sqlalchemy.Engine) -> Iterator[Callable[[], object]]:
    with engine.connect() as c:
        yield lambda: c.execute(SELECT_1).scalar()


@contextmanager
def _pool_checkout(pool: psycopg_pool.ConnectionPool[Any]) -> Iterator[Callable[[], object]]:
    with pool.connection() as c:
        yield lambda: c.execute("SELECT 1").fetchone()


def _hammer(checkout: Callable[[], Any], seconds: float) -> tuple[int, list[float]]:
    """THREADS threads doing checkout + SELECT 1 + return for ``seconds``: (ops, waits)."""
    stop = time.monotonic() + seconds
    waits: list[list[float]] = [[] for _ in range(THREADS)]
    counts = [0] * THREADS

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            with checkout() as run:
                waits[i].append(time.perf_counter() - t0)
                run()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), [w for ws in waits for w in ws]


def bench_threads(
    engines: dict[str, sqlalchemy.Engine],
    pools: dict[str, psycopg_pool.ConnectionPool[Any]],
    p: Profile,
) -> None:
    contenders: dict[str, Callable[[], Any]] = {}
    for name, engine in engines.items():
        contenders[name] = lambda e=engine: _sa_checkout(e)
    for name, pool in pools.items():
        contenders[f"{name} connection()"] = lambda pl=pool: _pool_checkout(pl)
    totals: dict[str, list[float]] = {n: [] for n in contenders}
    waits: dict[str, list[float]] = {n: [] for n in contenders}
    for r in range(p.threads_rounds):
        names = list(contenders)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            ops, w = _hammer(contenders[name], p.threads_seconds)
            totals[name].append(ops / p.threads_seconds)
            waits[name] += w
    base = sum(totals[ANCHOR]) / len(totals[ANCHOR])
    print(f"\nsync: {THREADS} threads on a pool of {POOL} (checkout + SELECT 1 + return)")
    print(f"  {'variant':<34} {'ops/s':>8} {'vs ' + ANCHOR:>14} {'wait p50 ms':>12} {'p99 ms':>8}")
    for name in contenders:
        rate = sum(totals[name]) / len(totals[name])
        p50 = percentile(waits[name], 0.5) * 1000
        p99 = percentile(waits[name], 0.99) * 1000
        print(f"  {name:<34} {rate:>8.0f} {rate / base:>13.2f}x {p50:>12.2f} {p99:>8.2f}")


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
