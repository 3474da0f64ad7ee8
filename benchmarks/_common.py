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


def alternate_sync(variants: Mapping[str, SyncOp], ops: int, rounds: int) -> dict[str, list[float]]:
    """µs/op of each variant in each of ``rounds`` alternating rounds (after one warm-up)."""
    names = list(variants)
    for name in names:
        time_sync(variants[name], max(5, ops // 10))  # connect, fill caches, warm the pool
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(time_sync(variants[name], ops))
    return samples


async def alternate_async(
    variants: Mapping[str, AsyncOp], ops: int, rounds: int
) -> dict[str, list[float]]:
    names = list(variants)
    for name in names:
        await time_async(variants[name], max(5, ops // 10))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in _rotated(names, r):
            samples[name].append(await time_async(variants[name], ops))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(
    title: str,
    samples: Mapping[str, Sequence[float]],
    anchor: str,
    *,
    unit: str = "µs/op",
    notes: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """``variant | median | spread | ratio vs anchor | note``; returns the medians.

    The spread is the interquartile range of the rounds relative to the median: a ratio
    between two variants means little when it is smaller than their spreads.
    """
    results = medians(samples)
    base = results[anchor]
    width = max(len(name) for name in results) + 2
    head = f"vs {anchor}"
    print(f"\n{title}")
    print(f"  {'variant':<{width}} {'median ' + unit:>14} {'spread':>7} {head:>{len(head) + 1}}")
    for name, value in results.items():
        values = samples[name]
        spread = (percentile(values, 0.75) - percentile(values, 0.25)) / value if value else 0.0
        note = (notes or {}).get(name, "")
        ratio = value / base if base else float("nan")
        line = f"  {name:<{width}} {value:>14.1f} {spread:>6.0%} {ratio:>{len(head)}.2f}x  {note}"
        print(line.rstrip())
    return results
