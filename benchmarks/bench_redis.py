"""poolguard.redis vs raw redis-py: GET, SET and a 100-command pipeline, sync and asyncio.

Both clients use the same pool class and size (``BlockingConnectionPool``, 10 connections) and
the same socket timeout; rounds alternate (raw, guarded, raw, guarded ...) so drift on a shared
machine hits both alike. Prints the median µs per operation and the guarded/raw ratio
(target <= 1.05).

    python benchmarks/bench_redis.py [--ops N] [--rounds R]

Uses ``REDIS_URL`` when set, else starts a throwaway server with poolguard.testing.RedisServer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import redis
import redis.asyncio

import poolguard.redis

POOL_SIZE = 10
SOCKET_TIMEOUT = 5.0
#: Same acquire timeout on both sides: asyncio keeps one timer per acquire in its heap, and the
#: timeout decides how long a cancelled one stays there.
ACQUIRE_TIMEOUT = 2.0
PIPELINE_LENGTH = 100
TARGET = 1.05


def raw_sync(url: str) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, socket_timeout=SOCKET_TIMEOUT, timeout=ACQUIRE_TIMEOUT
    )
    return redis.Redis(connection_pool=pool)


def raw_async(url: str) -> redis.asyncio.Redis:
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, socket_timeout=SOCKET_TIMEOUT, timeout=ACQUIRE_TIMEOUT
    )
    return redis.asyncio.Redis(connection_pool=pool)


def guarded_kwargs() -> dict[str, Any]:
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "query_timeout": SOCKET_TIMEOUT,
        "acquire_timeout": ACQUIRE_TIMEOUT,
    }


def sync_ops(client: Any) -> dict[str, Callable[[], object]]:
    def pipeline() -> object:
        pipe = client.pipeline(transaction=False)
        for i in range(PIPELINE_LENGTH):
            pipe.set(f"bench:p:{i}", i) if i % 2 else pipe.get(f"bench:p:{i}")
        return pipe.execute()

    return {
        "GET": lambda: client.get("bench:k"),
        "SET": lambda: client.set("bench:k", "v"),
        f"pipeline x{PIPELINE_LENGTH}": pipeline,
    }


def async_ops(client: Any) -> dict[str, Callable[[], Awaitable[object]]]:
    async def pipeline() -> object:
        pipe = client.pipeline(transaction=False)
        for i in range(PIPELINE_LENGTH):
            pipe.set(f"bench:p:{i}", i) if i % 2 else pipe.get(f"bench:p:{i}")
        return await pipe.execute()

    return {
        "GET": lambda: client.get("bench:k"),
        "SET": lambda: client.set("bench:k", "v"),
        f"pipeline x{PIPELINE_LENGTH}": pipeline,
    }


def time_sync(fn: Callable[[], object], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops * 1e6


async def time_async(fn: Callable[[], Awaitable[object]], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        await fn()
    return (time.perf_counter() - start) / ops * 1e6


Row = tuple[str, float, float, float]
"""(name, raw median µs, poolguard median µs, ratio of the best rounds)."""


def _row(name: str, samples: dict[str, list[float]]) -> Row:
    raw, guarded = samples["raw"], samples["guarded"]
    best = min(guarded) / min(raw)
    return (name, statistics.median(raw), statistics.median(guarded), best)


def bench_sync(url: str, ops: int, rounds: int) -> list[Row]:
    raw, guarded = raw_sync(url), poolguard.redis.from_url(url, **guarded_kwargs())
    rows = []
    for (name, raw_fn), guarded_fn in zip(
        sync_ops(raw).items(), sync_ops(guarded).values(), strict=True
    ):
        n = max(20, ops // PIPELINE_LENGTH) if name.startswith("pipeline") else ops
        raw_fn(), guarded_fn()  # warm up: connect, caches
        samples: dict[str, list[float]] = {"raw": [], "guarded": []}
        for _ in range(rounds):
            samples["raw"].append(time_sync(raw_fn, n))
            samples["guarded"].append(time_sync(guarded_fn, n))
        rows.append(_row(f"sync  {name}", samples))
    raw.close()
    guarded.close()
    return rows


async def bench_async(url: str, ops: int, rounds: int) -> list[Row]:
    raw, guarded = raw_async(url), poolguard.redis.async_from_url(url, **guarded_kwargs())
    rows = []
    for (name, raw_fn), guarded_fn in zip(
        async_ops(raw).items(), async_ops(guarded).values(), strict=True
    ):
        n = max(20, ops // PIPELINE_LENGTH) if name.startswith("pipeline") else ops
        await raw_fn()
        await guarded_fn()
        samples: dict[str, list[float]] = {"raw": [], "guarded": []}
        for _ in range(rounds):
            samples["raw"].append(await time_async(raw_fn, n))
            samples["guarded"].append(await time_async(guarded_fn, n))
        rows.append(_row(f"async {name}", samples))
    await raw.aclose()
    await guarded.aclose()
    return rows


def report(rows: list[Row]) -> None:
    head = f"{'operation':<22} {'raw µs':>9} {'poolguard µs':>13} {'ratio':>7}"
    print(f"{head} {'best-round ratio':>17}")
    for name, raw, guarded, best in rows:
        ratio = guarded / raw
        flag = "" if ratio <= TARGET else f"  (> {TARGET})"
        print(f"{name:<22} {raw:>9.1f} {guarded:>13.1f} {ratio:>7.3f} {best:>17.3f}{flag}")
    print("medians of alternating rounds; best-round ratio = fastest poolguard / fastest raw round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per client")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if not url:
            from poolguard.testing import RedisServer

            url = stack.enter_context(RedisServer()).url
        rows = bench_sync(url, args.ops, args.rounds)
        rows += asyncio.run(bench_async(url, args.ops, args.rounds))
    report(rows)


if __name__ == "__main__":
    main()
