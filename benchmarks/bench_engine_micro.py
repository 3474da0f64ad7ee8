"""Micro-benchmark of the engine hot path: N x (checkout, ``SELECT 1``, close).

Plain SQLAlchemy, SQLAlchemy + ``pool_pre_ping`` and ``poolguard.create_engine`` (sync and
asyncio) in alternating rounds against one server; wall and CPU µs per op (CPU from
``time.process_time``: the stabler signal on a shared machine, and what poolguard adds is CPU).
This is the profiling tool for that hot path (settings via ``--engine-kw``, a MySQL
``DATABASE_URL``); the standing against every anchor, with round trips, is ``make bench``
(benchmarks/run_all.py). ``--profile`` prints a cProfile of the poolguard sync variant instead,
to see where the per-operation calls go; ``--calls`` counts Python function calls per op for
each variant.

    python benchmarks/bench_engine_micro.py [--ops N] [--rounds R] [--async-only|--sync-only]
        [--profile] [--calls] [--engine-kw query_timeout=5 ...]

Uses ``DATABASE_URL`` when set, else starts a throwaway ``poolguard.testing.PostgresServer``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import poolguard

SELECT_1 = text("SELECT 1")
POOL = 8
PLAIN, PING, OURS = "sqlalchemy", "sqlalchemy+pre_ping", "poolguard"


def sa_url(url: str) -> str:
    """The plain SQLAlchemy URL for the anchors: psycopg, or PyMySQL for a MySQL/MariaDB
    ``DATABASE_URL`` (sync only: ``--sync-only``)."""
    scheme, rest = url.split("://", 1)
    driver = (
        "mysql+pymysql" if scheme.split("+")[0] in ("mysql", "mariadb") else "postgresql+psycopg"
    )
    return f"{driver}://{rest}"


def _parse_kw(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = float(value) if value.replace(".", "", 1).isdigit() else value
    return out


def sync_ops(url: str, ours_kw: dict[str, Any]) -> dict[str, Callable[[], object]]:
    sizes = {"pool_size": POOL, "max_overflow": 0}
    engines = {
        PLAIN: sqlalchemy.create_engine(sa_url(url), **sizes),
        PING: sqlalchemy.create_engine(sa_url(url), pool_pre_ping=True, **sizes),
        OURS: poolguard.create_engine(url, **sizes, **ours_kw),
    }

    def op(engine: sqlalchemy.Engine) -> Callable[[], object]:
        def run() -> object:
            with engine.connect() as c:
                return c.execute(SELECT_1).scalar()

        return run

    return {name: op(e) for name, e in engines.items()}


def async_ops(url: str, ours_kw: dict[str, Any]) -> dict[str, Callable[[], Awaitable[object]]]:
    sizes = {"pool_size": POOL, "max_overflow": 0}
    engines = {
        PLAIN: create_async_engine(sa_url(url), **sizes),
        PING: create_async_engine(sa_url(url), pool_pre_ping=True, **sizes),
        OURS: poolguard.create_async_engine(url, **sizes, **ours_kw),
    }

    def op(engine: Any) -> Callable[[], Awaitable[object]]:
        async def run() -> object:
            async with engine.connect() as c:
                return (await c.execute(SELECT_1)).scalar()

        return run

    return {name: op(e) for name, e in engines.items()}


Sample = tuple[float, float]


def run_sync(fn: Callable[[], object], ops: int) -> Sample:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - wall) / ops * 1e6, (time.process_time() - cpu) / ops * 1e6


async def run_async(fn: Callable[[], Awaitable[object]], ops: int) -> Sample:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(ops):
        await fn()
    return (time.perf_counter() - wall) / ops * 1e6, (time.process_time() - cpu) / ops * 1e6


def report(title: str, samples: dict[str, list[Sample]]) -> None:
    wall = {n: statistics.median(s[0] for s in v) for n, v in samples.items()}
    cpu = {n: statistics.median(s[1] for s in v) for n, v in samples.items()}
    # The least disturbed round: on a shared box other processes only ever add time.
    best = {n: min(s[1] for s in v) for n, v in samples.items()}
    print(f"\n{title} (medians; 'best CPU' = least disturbed round)")
    print(
        f"  {'variant':<22} {'wall µs':>8} {'CPU µs':>8} {'wall/plain':>10} {'CPU/plain':>9}"
        f" {'best CPU':>9} {'best/plain':>10}"
    )
    for n in samples:
        print(
            f"  {n:<22} {wall[n]:>8.1f} {cpu[n]:>8.1f} {wall[n] / wall[PLAIN]:>10.2f}"
            f" {cpu[n] / cpu[PLAIN]:>9.2f} {best[n]:>9.1f} {best[n] / best[PLAIN]:>10.2f}"
        )
    print(
        f"  -> poolguard: wall {wall[OURS] / wall[PLAIN]:.2f}x plain,"
        f" {wall[OURS] / wall[PING]:.2f}x pre_ping; CPU {cpu[OURS] / cpu[PLAIN]:.2f}x plain,"
        f" {cpu[OURS] / cpu[PING]:.2f}x pre_ping"
    )


def bench_sync(ops: dict[str, Callable[[], object]], n: int, rounds: int) -> None:
    names = list(ops)
    for name in names:
        run_sync(ops[name], max(20, n // 5))
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            samples[name].append(run_sync(ops[name], n))
    report(f"sync: {n} ops x {rounds} rounds", samples)


async def bench_async(ops: dict[str, Callable[[], Awaitable[object]]], n: int, rounds: int) -> None:
    names = list(ops)
    for name in names:
        await run_async(ops[name], max(20, n // 5))
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            samples[name].append(await run_async(ops[name], n))
    report(f"async: {n} ops x {rounds} rounds", samples)


def count_calls(ops: dict[str, Callable[[], object]], n: int) -> None:
    print("\nPython calls per op (cProfile, sync)")
    for name, fn in ops.items():
        run_sync(fn, 20)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        total = pstats.Stats(prof).total_calls  # type: ignore[attr-defined]
        print(f"  {name:<22} {total / n:>8.1f}")


def profile(fn: Callable[[], object], n: int, limit: int) -> None:
    run_sync(fn, 50)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    st = pstats.Stats(prof, stream=sys.stdout)
    st.sort_stats("tottime").print_stats(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sync-only", action="store_true")
    parser.add_argument("--async-only", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile poolguard (sync)")
    parser.add_argument("--profile-plain", action="store_true", help="cProfile plain (sync)")
    parser.add_argument("--calls", action="store_true", help="Python calls per op")
    parser.add_argument("--engine-kw", nargs="*", default=[], help="poolguard settings k=v")
    args = parser.parse_args()
    ours_kw = _parse_kw(args.engine_kw)
    with ExitStack() as stack:
        url = os.environ.get("DATABASE_URL")
        if not url:
            from poolguard.testing import PostgresServer

            url = stack.enter_context(PostgresServer()).url
        if args.profile or args.profile_plain or args.calls:
            ops = sync_ops(url, ours_kw)
            if args.calls:
                count_calls(ops, args.ops)
            if args.profile:
                profile(ops[OURS], args.ops, 40)
            if args.profile_plain:
                profile(ops[PLAIN], args.ops, 40)
            return
        print(f"engine micro-benchmark (poolguard settings: {ours_kw or 'defaults'})")
        if not args.async_only:
            bench_sync(sync_ops(url, ours_kw), args.ops, args.rounds)
        if not args.sync_only:
            asyncio.run(bench_async(async_ops(url, ours_kw), args.ops, args.rounds))


if __name__ == "__main__":
    main()
