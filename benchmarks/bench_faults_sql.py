"""The numbers of docs/postgres.md and docs/mysql.md "Measured": one throwaway server, real
faults, one run.

Each row makes the fault happen and times what a caller sees, with the library's defaults
(breaker and retry budget on) unless the row says otherwise:

  - SIGSTOP freeze with ``deadline(1.0)``, sync and async; with ``query_timeout=0.5`` only;
  - a listener that never answers (``DeafListener``) with ``connect_timeout=0.3``;
  - a blackholed network (``FaultProxy.blackhole``) mid-session with ``deadline(0.8)``;
  - connections refused (proxy down) for 0.5 s, then back;
  - a restart with 1.5 s downtime under reads from 3 threads (``stream_during``), and the same
    through plain SQLAlchemy with ``pool_pre_ping`` (the anchor).

    python benchmarks/bench_faults_sql.py [--kind postgres|mysql]

Measured and printed, not asserted: tests/integration/postgres and tests/integration/mysql
assert the bounds with grace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import text

import poolguard
from poolguard.testing import (
    DeafListener,
    FaultProxy,
    LocalServer,
    MySQLServer,
    PostgresServer,
    stream_during,
)

DOWNTIME = 1.5
READERS = 3


def timed(fn: Callable[[], Any]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - started, type(exc).__name__
    return time.monotonic() - started, "ok"


def row(what: str, result: str) -> None:
    print(f"| {what} | {result} |")


def freeze_deadline(pg: LocalServer) -> None:
    engine = poolguard.create_engine(pg.url)
    aengine = poolguard.create_async_engine(pg.url)

    def sync_call() -> None:
        with poolguard.deadline(1.0), engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def async_call() -> tuple[float, str]:
        async with aengine.connect() as conn:  # connected before the freeze
            await conn.execute(text("SELECT 1"))
            await conn.commit()
            pg.freeze()
            started = time.monotonic()
            try:
                async with poolguard.deadline(1.0):
                    await conn.execute(text("SELECT 1"))
            except Exception as exc:
                return time.monotonic() - started, type(exc).__name__
            finally:
                pg.thaw()
        return time.monotonic() - started, "ok"

    sync_call()  # a pooled connection exists before the freeze
    with pg.frozen():
        s_time, s_err = timed(sync_call)
    a_time, a_err = asyncio.run(async_call())
    s_after, _ = timed(sync_call)
    row(
        "SIGSTOP freeze, `deadline(1.0)`, sync / async",
        f"`{s_err.split('_')[0]}` after {s_time:.2f} s / {a_time:.2f} s (`{a_err.split('_')[0]}`);"
        f" the next call after thaw succeeded in {s_after * 1000:.0f} ms",
    )
    engine.dispose()
    asyncio.run(aengine.dispose())


def freeze_query_timeout(pg: LocalServer) -> None:
    engine = poolguard.create_engine(pg.url, query_timeout=0.5)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        with pg.frozen():
            took, err = timed(lambda: conn.execute(text("SELECT 1")))
    row(
        "SIGSTOP freeze, `query_timeout=0.5`, no deadline",
        f"`{err.split('_')[0]}` after {took:.2f} s (backstop = 0.5 + 0.5 s grace)",
    )
    engine.dispose()


def deaf_connect(pg: LocalServer) -> None:
    with DeafListener() as deaf:
        engine = poolguard.create_engine(deaf.url(pg.url), connect_timeout=0.3, retry_attempts=1)
        took, err = timed(lambda: engine.connect().close())
    row(
        "deaf listener, `connect_timeout=0.3`, `retry_attempts=1`",
        f"`{err.split('_')[0]}` after {took:.2f} s",
    )
    engine.dispose()


def blackhole_mid_session(pg: LocalServer) -> None:
    with FaultProxy(pg.host, pg.port) as proxy:
        engine = poolguard.create_engine(proxy.url(pg.url))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            proxy.blackhole()

            def call() -> None:
                with poolguard.deadline(0.8):
                    conn.execute(text("SELECT 1"))

            took, err = timed(call)
        proxy.clear()
        engine.dispose()
    row(
        "blackholed network mid-session, `deadline(0.8)`",
        f"`{err.split('_')[0]}` after {took:.2f} s",
    )


def refused_then_back(pg: LocalServer) -> None:
    with FaultProxy(pg.host, pg.port) as proxy:
        engine = poolguard.create_engine(proxy.url(pg.url))
        proxy.down()
        timer = threading.Timer(0.5, proxy.up)
        timer.start()

        def call() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        took, err = timed(call)
        timer.join()
        snap = poolguard.stats(engine)
        engine.dispose()
    row(
        "connections refused for 0.5 s, then back (defaults, no deadline)",
        f"{err} after {took:.2f} s ({snap['connect_failures']} failed connects,"
        f" {snap['breaker']['opened']} breaker openings)",
    )


def restart(pg: LocalServer) -> None:
    guarded = poolguard.create_engine(pg.url)
    driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    scheme, rest = pg.url.split("://", 1)
    anchor = sqlalchemy.create_engine(f"{driver[scheme]}://{rest}", pool_pre_ping=True)

    def reader(engine: Any, took: list[float]) -> Callable[[], None]:
        def read() -> None:
            started = time.monotonic()
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            finally:
                took.append(time.monotonic() - started)

        return read

    for name, engine in (("poolguard, defaults", guarded), ("SQLAlchemy + pool_pre_ping", anchor)):
        took: list[float] = []
        reader(engine, took)()  # warm the pool
        result = stream_during(
            lambda: pg.restart(downtime=DOWNTIME), reader(engine, took), threads=READERS
        )
        row(
            f"restart with {DOWNTIME} s downtime, reads from {READERS} threads: {name}",
            f"{len(result.ok)} reads OK, {len(result.errors)} errors,"
            f" longest call {max(took):.2f} s",
        )
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kind", choices=("postgres", "mysql"), default="postgres")
    kind = parser.parse_args().kind
    logging.disable(logging.WARNING)
    server_class = PostgresServer if kind == "postgres" else MySQLServer
    with server_class() as pg:
        print("| fault | result |\n|---|---|")
        for step in (
            freeze_deadline,
            freeze_query_timeout,
            deaf_connect,
            blackhole_mid_session,
            refused_then_back,
            restart,
        ):
            step(pg)


if __name__ == "__main__":
    main()
