"""The process-wide keepalive thread (poolguard.core.keepalive) with stand-in pools: one thread
for many pools, sweeps at each pool's due time, a collected or unwatched pool is dropped, the
thread ends when nothing is watched, asyncio pools are swept on their own loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable

from poolguard.core import keepalive

HANG_GUARD = 20.0


def until(predicate: Callable[[], bool], what: str) -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never became true"
        time.sleep(0.005)


class FakePool:
    def __init__(self, interval: float | None = 0.01) -> None:
        self.interval = interval
        self.sweeps = 0
        self.threads: set[str] = set()

    def keepalive_interval(self) -> float | None:
        return self.interval

    def keepalive_sweep(self, now: float) -> float | None:
        self.sweeps += 1
        self.threads.add(threading.current_thread().name)
        return None

    async def akeepalive_sweep(self, now: float) -> float | None:
        return self.keepalive_sweep(now)


def test_one_thread_many_pools_then_gone() -> None:
    pools = [FakePool() for _ in range(5)]
    for pool in pools:
        keepalive.watch(pool)
    until(lambda: all(p.sweeps >= 3 for p in pools), "every pool swept 3 times")
    assert len(keepalive.running()) == 1
    assert {name for p in pools for name in p.threads} == {"poolguard-keepalive"}
    for pool in pools:
        keepalive.unwatch(pool)
    until(lambda: keepalive.running() == [], "the thread gone")


def test_collected_pool_dropped_and_interval_off_stops() -> None:
    keepalive.watch(FakePool())  # nothing else refers to it
    gc.collect()
    off = FakePool(interval=None)
    keepalive.watch(off)
    until(lambda: keepalive.running() == [], "the thread gone")
    assert keepalive.watched() == 0
    assert off.sweeps == 0


def test_asyncio_pool_swept_on_its_loop() -> None:
    async def main() -> set[str]:
        pool = FakePool()
        keepalive.watch(pool, asyncio.get_running_loop())
        threading.current_thread().name = "the-loop"
        while pool.sweeps < 3:
            await asyncio.sleep(0.005)
        keepalive.unwatch(pool)
        return pool.threads

    name = threading.current_thread().name
    try:
        assert asyncio.run(main()) == {"the-loop"}
    finally:
        threading.current_thread().name = name
    until(lambda: keepalive.running() == [], "the thread gone")
