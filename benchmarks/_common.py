"""Timing helpers shared by the benchmarks: alternating rounds, medians, ratio tables.

Alternating rounds (A, B, C, A, B, C ... with the order rotated each round) spread the drift of
a shared, noisy machine evenly over every variant; the median of the rounds then ignores the few
rounds another process disturbed. Ratios are against an *anchor* measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

SyncOp = Callable[[], object]
AsyncOp = Callable[[], Awaitable[object]]


def time_sync(fn: SyncOp, ops: int) -> float:
    """µs per call of ``fn`` over ``ops`` calls."""
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops * 1e6


async def time_async(fn: AsyncOp, ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        await fn()
    return (time.perf_counter() - start) / ops * 1e6


def _rotated(names: Sequence[str], shift: int) -> list[str]:
    shift %= max(1, len(names))
    return [*names[shift:], *names[:shift]]


def alternate_sync(variants: Mapping[str, SyncOp], ops: int, rounds: int) -> dict[str, float]:
    """Median µs/op of each variant over ``rounds`` alternating rounds (after one warm-up)."""
    names = list(variants)
    for name in names:
        time_sync(variants[name], max(5, ops // 10))  # connect, fill caches, warm the pool
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(time_sync(variants[name], ops))
    return {name: statistics.median(values) for name, values in samples.items()}


async def alternate_async(
    variants: Mapping[str, AsyncOp], ops: int, rounds: int
) -> dict[str, float]:
    names = list(variants)
    for name in names:
        await time_async(variants[name], max(5, ops // 10))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(await time_async(variants[name], ops))
    return {name: statistics.median(values) for name, values in samples.items()}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(
    title: str,
    results: Mapping[str, float],
    anchor: str,
    *,
    unit: str = "µs/op",
    notes: Mapping[str, str] | None = None,
) -> None:
    """``variant | median | ratio vs anchor | note``; the anchor's ratio is 1.00 by definition."""
    base = results[anchor]
    width = max(len(name) for name in results) + 2
    print(f"\n{title}")
    print(f"  {'variant':<{width}} {'median ' + unit:>14} {'vs ' + anchor:>{len(anchor) + 6}}")
    for name, value in results.items():
        note = (notes or {}).get(name, "")
        ratio = value / base if base else float("nan")
        print(f"  {name:<{width}} {value:>14.1f} {ratio:>{len(anchor) + 5}.2f}x  {note}".rstrip())
