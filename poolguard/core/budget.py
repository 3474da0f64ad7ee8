"""Retry budget: a token bucket that keeps retries a bounded fraction of traffic.

:class:`RetryBudget`, one per pool, held by the ``retry.py`` :class:`Guard`.

Modelled on gRPC retry throttling and Finagle/Envoy retry budgets. Every operation deposits
``ratio`` tokens (capped at ``capacity``); every retry withdraws one. A retry is allowed only
while at least one token is left. Over time retries are therefore at most ``ratio`` of requests,
plus a burst of ``capacity`` so a quiet service can still ride out one blip. When a database is
down and every request fails, the bucket drains and callers fail fast instead of multiplying the
load by ``retry_attempts`` (a retry storm).
"""

from __future__ import annotations

import threading

#: Burst allowance: retries available to a cold or quiet pool.
DEFAULT_CAPACITY = 10.0


class RetryBudget:
    """Thread-safe token bucket shared by every operation of one pool."""

    __slots__ = ("_lock", "_tokens", "capacity", "ratio")

    def __init__(self, ratio: float | None, capacity: float = DEFAULT_CAPACITY) -> None:
        if ratio is not None and ratio < 0:
            raise ValueError("retry budget ratio must be >= 0")
        self.ratio = ratio
        self.capacity = capacity
        self._tokens = capacity
        self._lock = threading.Lock()

    @property
    def unlimited(self) -> bool:
        return self.ratio is None

    @property
    def tokens(self) -> float:
        return self._tokens

    def reconfigure(self, ratio: float | None) -> None:
        """A new ratio (live reconfiguration): the tokens in the bucket carry over."""
        if ratio is not None and ratio < 0:
            raise ValueError("retry budget ratio must be >= 0")
        with self._lock:
            self.ratio = ratio

    def on_request(self) -> None:
        """Credit one operation (first attempts only, not retries)."""
        # A full bucket stays full: skip the lock (the common case when nothing is failing).
        # If a retry spends a token right after this read, the deposit is ordered before it.
        if self.ratio is None or self._tokens >= self.capacity:
            return
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Withdraw one token for a retry; False means the budget is exhausted."""
        if self.ratio is None:
            return True
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True
