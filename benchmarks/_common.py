"""Timing helpers shared by the benchmarks: alternating rounds, medians, ratio tables.

Alternating rounds (A, B, C, A, B, C ... with the order rotated each round) spread the drift of
a shared, noisy machine evenly over every variant; the median of the rounds then ignores the few
rounds another process disturbed. Ratios are against an *anchor* measured in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

SyncOp = Callable[[], object]
AsyncOp = Callable[[], Awaitable[object]]


Sample = tuple[float, float]
"""(wall µs/op, CPU µs/op of the calling thread)."""


def time_sync(fn: SyncOp, ops: int) -> Sample:
    """Wall and this thread's CPU µs per call of ``fn`` over ``ops`` calls.

    CPU time is immune to other processes on a shared machine (wall time is not): it isolates
    the client-side cost of a variant, while wall time adds the server and the round trips.
    """
    cpu, start = time.thread_time(), time.perf_counter()
    for _ in range(ops):
        fn()
    wall = (time.perf_counter() - start) / ops * 1e6
    return wall, (time.thread_time() - cpu) / ops * 1e6


async def time_async(fn: AsyncOp, ops: int) -> Sample:
    cpu, start = time.thread_time(), time.perf_counter()
    for _ in range(ops):
        await fn()
    wall = (time.perf_counter() - start) / ops * 1e6
    return wall, (time.thread_time() - cpu) / ops * 1e6


def _rotated(names: Sequence[str], shift: int) -> list[str]:
    shift %= max(1, len(names))
    return [*names[shift:], *names[:shift]]


def alternate_sync(variants: Mapping[str, SyncOp], ops: int, rounds: int) -> dict[str, list[float]]:
    """µs/op of each variant in each of ``rounds`` alternating rounds (after one warm-up)."""
    names = list(variants)
    for name in names:
        time_sync(variants[name], max(5, ops // 10))  # connect, fill caches, warm the pool
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(time_sync(variants[name], ops))
    return samples


async def alternate_async(
    variants: Mapping[str, AsyncOp], ops: int, rounds: int
) -> dict[str, list[Sample]]:
    names = list(variants)
    for name in names:
        await time_async(variants[name], max(5, ops // 10))
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(await time_async(variants[name], ops))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def medians(samples: Mapping[str, Sequence[Sample]], index: int = 0) -> dict[str, float]:
    """Median wall (``index=0``) or CPU (``index=1``) µs/op of each variant."""
    return {name: statistics.median(v[index] for v in values) for name, values in samples.items()}


def print_table(
    title: str,
    samples: Mapping[str, Sequence[Sample]],
    anchor: str,
    *,
    notes: Mapping[str, str] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """``variant | median wall µs/op | spread | ratio | median CPU µs/op | CPU ratio | note``.

    The spread is the interquartile range of the rounds' wall times relative to their median:
    a wall ratio between two variants means little when it is smaller than their spreads.
    Returns the (wall, CPU) medians.
    """
    wall, cpu = medians(samples, 0), medians(samples, 1)
    width = max(len(name) for name in wall) + 2
    head = f"vs {anchor}"
    print(f"\n{title}")
    print(
        f"  {'variant':<{width}} {'wall µs/op':>10} {'spread':>6} {head:>{len(head)}}"
        f" {'CPU µs/op':>9} {'CPU ratio':>9}"
    )
    for name, value in wall.items():
        walls = [v[0] for v in samples[name]]
        spread = (percentile(walls, 0.75) - percentile(walls, 0.25)) / value if value else 0.0
        note = (notes or {}).get(name, "")
        ratio = value / wall[anchor]
        line = (
            f"  {name:<{width}} {value:>10.1f} {spread:>6.0%} {ratio:>{len(head) - 1}.2f}x"
            f" {cpu[name]:>9.1f} {cpu[name] / cpu[anchor]:>8.2f}x  {note}"
        )
        print(line.rstrip())
    return wall, cpu


# --- per-call latencies, load, round trips (benchmarks/run_all.py) ------------------------------


def latencies_sync(fn: SyncOp, ops: int) -> tuple[list[float], float]:
    """µs of each of ``ops`` calls of ``fn``, and this thread's CPU µs per call."""
    clock, out = time.perf_counter, []
    cpu = time.thread_time()
    for _ in range(ops):
        start = clock()
        fn()
        out.append((clock() - start) * 1e6)
    return out, (time.thread_time() - cpu) / ops * 1e6


async def latencies_async(fn: AsyncOp, ops: int) -> tuple[list[float], float]:
    clock, out = time.perf_counter, []
    cpu = time.thread_time()
    for _ in range(ops):
        start = clock()
        await fn()
        out.append((clock() - start) * 1e6)
    return out, (time.thread_time() - cpu) / ops * 1e6


def load_threads(fn: SyncOp, threads: int, seconds: float) -> tuple[list[float], float]:
    """``threads`` threads calling ``fn`` back to back for ``seconds``: (µs per call, calls/s).

    The threads start together at a barrier, so the pool's warm-up and the thread start-up are
    not in the window; throughput is calls over the time until the last thread finished.
    """
    barrier = threading.Barrier(threads + 1)
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    window: list[float] = []

    def worker(out: list[float]) -> None:
        clock = time.perf_counter
        barrier.wait()
        stop = window[0] + seconds
        while (start := clock()) < stop:
            fn()
            out.append((clock() - start) * 1e6)

    pool = [threading.Thread(target=worker, args=(out,)) for out in per_thread]
    for t in pool:
        t.start()
    window.append(time.perf_counter())
    barrier.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - window[0]
    calls = [c for out in per_thread for c in out]
    return calls, len(calls) / elapsed


async def load_tasks(fn: AsyncOp, tasks: int, seconds: float) -> tuple[list[float], float]:
    """``tasks`` asyncio tasks calling ``fn`` back to back for ``seconds``: (µs/call, calls/s)."""
    clock = time.perf_counter
    begin = clock()
    stop = begin + seconds
    calls: list[float] = []

    async def worker() -> None:
        while (start := clock()) < stop:
            await fn()
            calls.append((clock() - start) * 1e6)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return calls, len(calls) / (clock() - begin)


def rotations(names: Sequence[str], rounds: int) -> Iterator[str]:
    """The alternating order: every name once per round, the order rotated each round."""
    for r in range(rounds):
        yield from _rotated(names, r)
