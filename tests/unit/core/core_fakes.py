"""Test doubles shared by the core unit tests (a unique module name: no package here)."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that only moves when told to (and when fake sleeps advance it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Stand-in for time.sleep: records the delay and advances the clock by it."""
        self.sleeps.append(seconds)
        self.now += seconds
