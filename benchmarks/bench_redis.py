"""poolguard.redis vs raw redis-py: the contenders and operations of the Redis rows of make bench.

Both clients use the same pool class and size (``BlockingConnectionPool``, 8 connections) and
the same socket and acquire timeouts. ``benchmarks/run_all.py`` times GET, SET and a 100-command
pipeline with them, sync and asyncio, single caller and 32 threads / 200 tasks (target <= 1.05x).

    python benchmarks/bench_redis.py [--quick]     # = run_all.py --only redis
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

POOL_SIZE = 8
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


def main() -> None:
    """The Redis rows of ``make bench``: ``run_all.py --only redis`` (its flags apply)."""
    import run_all  # this file's directory is on sys.path when it runs as a script

    sys.argv[1:1] = ["--only", "redis"]
    run_all.main()


if __name__ == "__main__":
    main()
