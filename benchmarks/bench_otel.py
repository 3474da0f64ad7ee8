"""Cost of the OpenTelemetry instrumentor on the hot path: checkout + ``SELECT 1`` + close
(PostgreSQL engine) and a Redis ``GET``, uninstrumented vs instrumented, alternating rounds in
one run (the instrumented rounds sample wait/use times into the deques; a collection every
round drains them, as a periodic reader would). CPU µs per op of the calling thread.

    python benchmarks/bench_otel.py [--ops N] [--rounds R]

Starts throwaway PostgreSQL and Redis servers (poolguard.testing).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text

import poolguard
from benchmarks._common import time_sync
from poolguard.metrics.otel import PoolguardInstrumentor
from poolguard.testing import PostgresServer, RedisServer

SELECT_1 = text("SELECT 1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    with PostgresServer() as pg, RedisServer() as rs:
        engine = poolguard.create_engine(pg.url, name="bench", pool_size=4)
        cache = poolguard.redis.from_url(rs.url, name="bench_redis")
        cache.set("k", "v")

        def checkout() -> object:
            with engine.connect() as conn:
                return conn.execute(SELECT_1).scalar()

        ops: dict[str, Callable[[], object]] = {"engine": checkout, "redis": lambda: cache.get("k")}
        for name, fn in ops.items():
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            time_sync(fn, args.ops // 5)  # warm
            for r in range(args.rounds):
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    if mode == "on":
                        PoolguardInstrumentor().instrument(meter_provider=meters)
                    cpu[mode].append(time_sync(fn, args.ops)[1])
                    if mode == "on":
                        reader.get_metrics_data()  # drains the samples, like a periodic reader
                        PoolguardInstrumentor().uninstrument()
            off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
            print(f"{name}: off {off:.2f} us/op CPU, on {on:.2f} us/op CPU, ratio {on / off:.3f}")
        engine.dispose()
        cache.close()


if __name__ == "__main__":
    main()
