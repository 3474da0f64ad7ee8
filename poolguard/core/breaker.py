"""Circuit breaker over connect-level failures.

closed ──(N consecutive connect failures)──▶ open ──(reset elapsed)──▶ half-open
  ▲                                                                        │
  └────────────────────(probe succeeds)────────────────────────────────────┘
                         (probe fails) ──▶ open again

While open, :meth:`CircuitBreaker.before_call` raises :class:`CircuitOpenError` without touching
the network, so a dead server is not hammered and callers do not queue behind connect timeouts.
In half-open exactly one probe runs at a time; a probe that never reports back (its caller was
cancelled) frees its slot after another ``reset`` period, so the breaker cannot wedge.

The lock is only held for a few field updates and never across I/O or an ``await``, so one
breaker serves threads and asyncio tasks alike.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from poolguard.errors import CircuitOpenError

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe breaker; ``failures=None`` disables it (always closed)."""

    def __init__(
        self,
        failures: int | None,
        reset: float,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
        name: str = "pool",
    ) -> None:
        if failures is not None and failures < 1:
            raise ValueError("breaker failures must be >= 1 (or None to disable)")
        self.failures = failures
        self.reset = reset
        self.name = name
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._peek(self._clock())

    def _peek(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.reset:
            return BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> None:
        """Raise CircuitOpenError when calls must fail fast; else let the call proceed."""
        # Lock-free fast path: CLOSED has no time-driven transition, so an unlocked read is
        # enough. Racing a concurrent opening only admits a call that arrived "just before" it.
        if self.failures is None or self._state is BreakerState.CLOSED:
            return
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            now = self._clock()
            state = self._peek(now)
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN:
                probe_stale = (
                    self._probe_started is not None and now - self._probe_started >= self.reset
                )
                if self._probe_started is None or probe_stale:
                    if self._state is not BreakerState.HALF_OPEN:
                        changed = (self._state, BreakerState.HALF_OPEN)
                        self._state = BreakerState.HALF_OPEN
                    self._probe_started = now
                    state = BreakerState.CLOSED  # this caller is the probe
            admit = self._admits_at(now)
        if changed:
            self._notify(*changed)
        if state is BreakerState.CLOSED:
            return
        raise self.open_error(state, 0.0 if admit is None else admit - now)

    def admits_in(self) -> float:
        """Seconds until :meth:`before_call` may admit a call again (0.0: it would now).

        Lets the retry loop give up at once instead of sleeping a backoff delay only to be
        rejected: the breaker, not the backoff, decides when the server is tried again.
        """
        if self.failures is None or self._state is BreakerState.CLOSED:
            return 0.0
        with self._lock:
            now = self._clock()
            at = self._admits_at(now)
        return 0.0 if at is None else at - now

    def _admits_at(self, now: float) -> float | None:
        if self._state is BreakerState.CLOSED:
            return None
        if self._state is BreakerState.OPEN:
            at = self._opened_at + self.reset  # then half-open, with a free probe slot
        elif self._probe_started is not None:
            at = self._probe_started + self.reset  # the running probe's slot goes stale
        else:
            return None
        return None if at <= now else at

    def open_error(self, state: BreakerState, retry_in: float) -> CircuitOpenError:
        return CircuitOpenError(
            f"circuit breaker for {self.name} is {state.value}: the server failed "
            f"{self.failures} consecutive connection attempts; failing fast "
            f"(next probe in {retry_in:.1f}s)",
            hint="tune POOLGUARD_BREAKER_FAILURES / POOLGUARD_BREAKER_RESET",
        )

    def record_success(self) -> None:
        """The server answered (even with an error that is not about connecting)."""
        # Lock-free fast path for the common case: nothing to reset. CLOSED implies no probe
        # is pending; a failure racing this read is simply ordered after this success.
        if self.failures is None or (self._consecutive == 0 and self._state is BreakerState.CLOSED):
            return
        with self._lock:
            self._consecutive = 0
            self._probe_started = None
            old = self._state
            self._state = BreakerState.CLOSED
        if old is not BreakerState.CLOSED:
            self._notify(old, BreakerState.CLOSED)

    def record_failure(self) -> None:
        """A connect-level failure."""
        if self.failures is None:
            return
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            now = self._clock()
            self._consecutive += 1
            probe_failed = self._state is BreakerState.HALF_OPEN
            if probe_failed or (
                self._state is BreakerState.CLOSED and self._consecutive >= self.failures
            ):
                changed = (self._state, BreakerState.OPEN)
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._probe_started = None
        if changed:
            self._notify(*changed)

    def _notify(self, old: BreakerState, new: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(old, new)
