"""How long one call takes to fail when the server cannot be reached, with no deadline.

Two real faults, no server needed: a refused port (a free port nobody listens on) and a host
that never answers (:class:`poolguard.testing.DeafListener`: SYNs dropped, so connect() hangs
until a timeout). Each variant makes one call (``SELECT 1`` / ``GET``) with the library's
defaults and no ``poolguard.deadline()``; printed: seconds to the error, the error's class and
the first words of its message. Anchors measured in the same run: plain SQLAlchemy + psycopg
(with and without ``pool_pre_ping``) and plain redis-py. A call still running after ``--cap``
seconds is reported as ``> cap`` (it is left behind in a daemon thread).

    python benchmarks/bench_time_to_fail.py [--cap 40] [--only postgres,redis,...]

Measured, not asserted (the numbers go into README "How retries behave" and the docs).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import poolguard
import poolguard.postgres
import poolguard.redis
from poolguard.testing import DeafListener, free_port

PASSWORD = "bench-pw-not-shown"
Call = Callable[[str], Any]


def _sql(engine: Any) -> None:
    from sqlalchemy import text

    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _async_sql(engine: Any) -> None:
    from sqlalchemy import text

    async def run() -> None:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    asyncio.run(run())


def pg_engine(url: str) -> None:
    _sql(poolguard.create_engine(url))


def pg_async_engine(url: str) -> None:
    _async_sql(poolguard.create_async_engine(url))


def mysql_engine(url: str) -> None:
    _sql(poolguard.create_engine(url.replace("postgresql://", "mysql://")))


def mysql_async_engine(url: str) -> None:
    _async_sql(poolguard.create_async_engine(url.replace("postgresql://", "mysql://")))


def native_pool(url: str) -> None:
    pool = poolguard.postgres.create_pool(url)
    try:
        pool.fetchall("SELECT 1")
    finally:
        pool.close(timeout=0.5)


def plain_sqlalchemy(url: str, **kwargs: Any) -> None:
    import sqlalchemy

    _sql(sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), **kwargs))


def redis_sync(url: str) -> None:
    client = poolguard.redis.from_url(_redis(url))
    try:
        client.get("k")
    finally:
        client.close()


def redis_async(url: str) -> None:
    async def run() -> None:
        client = poolguard.redis.async_from_url(_redis(url))
        try:
            await client.get("k")
        finally:
            await client.aclose()

    asyncio.run(run())


def plain_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(_redis(url))
    try:
        client.get("k")
    finally:
        client.close()


def _redis(url: str) -> str:
    hostport = url.split("@", 1)[1].split("/", 1)[0]
    return f"redis://:{PASSWORD}@{hostport}/0"


VARIANTS: dict[str, tuple[str, Call]] = {
    "pg sync": ("postgres", pg_engine),
    "pg async": ("postgres", pg_async_engine),
    "pg native pool": ("postgres", native_pool),
    "mysql sync": ("mysql", mysql_engine),
    "mysql async": ("mysql", mysql_async_engine),
    "redis sync": ("redis", redis_sync),
    "redis async": ("redis", redis_async),
    "anchor: sqlalchemy+psycopg": ("postgres", plain_sqlalchemy),
    "anchor: sqlalchemy pre_ping": (
        "postgres",
        lambda url: plain_sqlalchemy(url, pool_pre_ping=True),
    ),
    "anchor: redis-py from_url": ("redis", plain_redis),
}


def measure(call: Call, url: str, cap: float) -> tuple[float | None, str]:
    """Seconds until ``call(url)`` raised (None: still running after ``cap``), and what."""
    outcome: list[tuple[float, str]] = []

    def run() -> None:
        started = time.monotonic()
        try:
            call(url)
        except Exception as exc:
            words = str(exc).split("\n", 1)[0][:90]
            outcome.append((time.monotonic() - started, f"{type(exc).__name__}: {words}"))
        else:
            outcome.append((time.monotonic() - started, "no error"))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(cap)
    if not outcome:
        return None, "still waiting"
    return outcome[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cap", type=float, default=40.0, help="give up measuring after (s)")
    parser.add_argument("--only", default="", help="comma-separated kinds: postgres,mysql,redis")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # breaker transitions and psycopg_pool's connect errors
    kinds = {k for k in args.only.split(",") if k}
    deaf = DeafListener()
    faults = {
        "refused": f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app",
        "blackholed": deaf.url(f"postgresql://app:{PASSWORD}@127.0.0.1:1/app"),
    }
    print(f"{'variant':<30} {'fault':<11} {'fails after':>11}  error")
    for name, (kind, call) in VARIANTS.items():
        if kinds and kind not in kinds:
            continue
        for fault, url in faults.items():
            seconds, what = measure(call, url, args.cap)
            shown = f"> {args.cap:.0f}s" if seconds is None else f"{seconds:.2f}s"
            assert PASSWORD not in what
            print(f"{name:<30} {fault:<11} {shown:>11}  {what}")
    deaf.close()


if __name__ == "__main__":
    main()
