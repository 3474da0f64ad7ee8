"""Exponential backoff with jitter, deterministic under an injected RNG.

:class:`Backoff` gives the delay before each retry; ``retry.py`` (:class:`Attempts`) asks it
and clips the sleep to the deadline.

For retry ``n`` (1 for the first retry) the exponential ceiling is
``cap(n) = min(max, initial * multiplier ** (n - 1))`` and the delay is:

- ``none``:          ``cap(n)``
- ``full`` (default): ``uniform(0, cap(n))`` — AWS "full jitter", spreads a thundering herd best
- ``equal``:         ``cap(n) / 2 + uniform(0, cap(n) / 2)`` — never shorter than half the ceiling
- ``decorrelated``:  ``min(max, uniform(initial, 3 * previous))`` with ``previous`` the last delay
  (``initial`` before the first retry) — AWS "decorrelated jitter"
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

JitterKind = Literal["full", "equal", "decorrelated", "none"]
JITTER_KINDS: tuple[JitterKind, ...] = ("full", "equal", "decorrelated", "none")


class Uniform(Protocol):
    """What backoff needs of an RNG: ``random.Random`` satisfies it."""

    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Backoff schedule; ``delay()`` is pure given the RNG."""

    initial: float = 0.05
    max: float = 2.0
    multiplier: float = 2.0
    jitter: JitterKind = "full"

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max < 0:
            raise ValueError("backoff initial and max must be >= 0")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")
        if self.jitter not in JITTER_KINDS:
            raise ValueError(f"unknown jitter {self.jitter!r}; use one of {JITTER_KINDS}")

    def ceiling(self, retry: int) -> float:
        """The exponential ceiling for retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        # Cap the exponent: 2.0 ** 2000 overflows, and the result is clamped to max anyway.
        exponent = min(retry - 1, 64)
        return min(self.max, self.initial * self.multiplier**exponent)

    def delay(self, retry: int, rng: Uniform, previous: float | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based)."""
        if self.jitter == "decorrelated":
            last = self.initial if previous is None else max(previous, self.initial)
            return min(self.max, rng.uniform(self.initial, 3 * last))
        cap = self.ceiling(retry)
        if self.jitter == "full":
            return rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return cap / 2 + rng.uniform(0.0, cap / 2)
        return cap


#: Module-level RNG for production use; tests inject ``random.Random(seed)``.
default_rng: random.Random = random.Random()
