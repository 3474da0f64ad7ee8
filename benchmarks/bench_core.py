"""Overhead of one no-failure pass through poolguard's retry machinery.

Compares, in the same process and run:
  sync:  a bare function call   vs  Guard.run(fn)   (and Guard.run_with(fn))
  async: a bare ``await afn()`` vs  await Guard.arun(afn)

The guard is built from default Settings (breaker, retry budget and stats all on), as an
integration would build it. Each figure is the best of several repeats (least disturbed by
other processes on a shared machine). Target: < 2 µs overhead per call.

    python benchmarks/bench_core.py [--calls N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from poolguard.config.settings import Settings
from poolguard.core import Classification, Disposition, Guard
from poolguard.core.retry import Attempts

TARGET_US = 2.0


def _classify(exc: BaseException) -> Classification:
    return Classification(Disposition.FAIL, "bench")


def make_guard() -> Guard:
    return Guard.from_settings(Settings(), name="bench", backend="sql", classify=_classify)


def best_sync(fn: Callable[[], object], calls: int, repeat: int) -> float:
    """Best µs per call of ``fn`` over ``repeat`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


async def best_async(step: Callable[[], Awaitable[object]], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            await step()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def measure(calls: int, repeat: int) -> list[tuple[str, float, float]]:
    guard = make_guard()

    def work() -> int:
        return 1

    def work_with(_attempts: Attempts) -> int:
        return 1

    async def awork() -> int:
        return 1

    bare = best_sync(work, calls, repeat)
    run = best_sync(lambda: guard.run(work), calls, repeat)
    run_with = best_sync(lambda: guard.run_with(work_with), calls, repeat)

    async def async_side() -> tuple[float, float]:
        abare = await best_async(awork, calls, repeat)
        arun = await best_async(lambda: guard.arun(awork), calls, repeat)
        return abare, arun

    abare, arun = asyncio.run(async_side())
    assert guard.stats.count("requests") == 3 * calls * repeat  # every pass went through
    return [
        ("bare call  fn()", bare, bare),
        ("Guard.run(fn)", run, bare),
        ("Guard.run_with(fn)", run_with, bare),
        ("bare await afn()", abare, abare),
        ("await Guard.arun(afn)", arun, abare),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = measure(args.calls, args.repeat)
    print(f"poolguard core overhead ({args.calls} calls x best of {args.repeat})")
    print(f"{'':24} {'us/call':>9} {'overhead us':>12} {'ratio':>8}")
    worst = 0.0
    for label, us, base in rows:
        overhead = us - base
        worst = max(worst, overhead)
        print(f"{label:24} {us:9.3f} {overhead:12.3f} {us / base:7.1f}x")
    verdict = "OK" if worst < TARGET_US else "OVER"
    print(f"worst overhead {worst:.3f} us  (target < {TARGET_US} us: {verdict})")


if __name__ == "__main__":
    main()
