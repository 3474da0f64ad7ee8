"""Circuit breaker over connect-level failures.

:class:`CircuitBreaker` (one per pool, held by the ``retry.py`` :class:`Guard`) and
:class:`BreakerState`; a backend says which failures are connect-level through its
``Classification`` (``disposition.py``).

closed ──(N consecutive connect failures)──▶ open ──(open interval elapsed)──▶ half-open
  ▲                                                                               │
  └───────────────────────────(probe succeeds)────────────────────────────────────┘
                                (probe fails) ──▶ open again, interval doubled

While open, no call touches the network: :meth:`CircuitBreaker.admission` tells a caller how
long until it may try, and the retry loop either waits that long (when it fits in the caller's
deadline / retry window) or fails fast with :class:`CircuitOpenError`. The open interval starts
short (:data:`FIRST_OPEN_INTERVAL`) and doubles with every failed probe up to ``reset``
(``POOLGUARD_BREAKER_RESET``): a server restart of a second or two is ridden out by callers that
wait for the next probe, while a long outage settles at one probe every ``reset`` seconds and
callers fail fast. (A fixed 10 s open period turned a 1.5 s PostgreSQL restart into 10 s of
errors — measured — which is worse than ``pool_pre_ping``.)

In half-open exactly one probe runs at a time; the other callers poll every
:data:`PROBE_POLL_INTERVAL` for its outcome. A probe that never reports back (its caller was
cancelled) frees its slot after ``reset``, so the breaker cannot wedge.

The probe belongs to the *operation* that took it, not to one call: a unit of work
(``run_transaction``) admitted as the probe goes on to check out a connection and run
statements, each asking the breaker again. Those nested calls run in the probe holder's
context (same thread, same asyncio task, or SQLAlchemy's greenlet sharing the task's context),
so the probe's id is kept in a :class:`contextvars.ContextVar` and a caller carrying the running
probe's id is admitted. Without that the unit waited on its own probe until the probe went stale
(``reset``, 10 s by default) — measured as 5-10 s stalls through a 1.5 s PostgreSQL restart,
and every other caller waited with it. Ids are never reused, so a context that held an earlier
probe (a thread's context outlives the operation) is not admitted by a later one.

The lock is only held for a few field updates and never across I/O or an ``await``, so one
breaker serves threads and asyncio tasks alike.
"""

from __future__ import annotations

import contextvars
import enum
import itertools
import threading
import time
from collections.abc import Callable

from poolguard.errors import CircuitOpenError

Clock = Callable[[], float]

#: Length of the first open period; doubled after each failed probe, capped at ``reset``.
FIRST_OPEN_INTERVAL = 0.25
#: How often callers waiting on a running half-open probe look for its outcome.
PROBE_POLL_INTERVAL = 0.05
#: How many probe ids one context remembers: an operation may hold the probes of a few
#: breakers at once (its SQL engine's and its Redis client's); older ids are long finished.
_HELD_PROBES = 4

#: Ids of the half-open probes the current operation holds (see the module docstring).
_held_probes: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "poolguard_breaker_probes", default=()
)
_probe_ids = itertools.count(1)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: For the per-call checks (a module global: one lookup, not a global and an attribute).
CLOSED = BreakerState.CLOSED


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
        self._interval = min(reset, FIRST_OPEN_INTERVAL)
        self._probe_started: float | None = None
        self._probe_id = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._peek(self._clock())

    def _peek(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self._interval:
            return BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go to the server now."""
        wait = self.admission()
        if wait is not None:
            raise self.open_error(self.state, wait)

    def admission(self) -> float | None:
        """None: go ahead (maybe as the half-open probe); a float: ask again in that many s."""
        # Lock-free fast path: CLOSED has no time-driven transition, so an unlocked read is
        # enough. Racing a concurrent opening only admits a call that arrived "just before" it.
        if self._state is CLOSED or self.failures is None:
            return None
        changed: tuple[BreakerState, BreakerState] | None = None
        wait: float | None = None
        probe = 0
        with self._lock:
            now = self._clock()
            state = self._peek(now)
            if state is BreakerState.OPEN:
                wait = self._opened_at + self._interval - now
            elif state is BreakerState.HALF_OPEN:
                probe_stale = (
                    self._probe_started is not None and now - self._probe_started >= self.reset
                )
                if self._probe_started is None or probe_stale:
                    if self._state is not BreakerState.HALF_OPEN:
                        changed = (self._state, BreakerState.HALF_OPEN)
                        self._state = BreakerState.HALF_OPEN
                    self._probe_started = now  # this caller is the probe
                    probe = self._probe_id = next(_probe_ids)
                elif self._probe_id not in _held_probes.get():
                    wait = PROBE_POLL_INTERVAL
                # else: a nested call of the operation holding the probe: it goes ahead.
        if probe:
            _held_probes.set((probe, *_held_probes.get()[: _HELD_PROBES - 1]))
        if changed:
            self._notify(*changed)
        return wait

    def admits_in(self) -> float:
        """Seconds until :meth:`admission` may admit a call (0.0: it would now), without
        taking the probe slot. A running probe counts as one poll interval away."""
        if self.failures is None or self._state is BreakerState.CLOSED:
            return 0.0
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.OPEN:
                return max(0.0, self._opened_at + self._interval - now)
            if self._probe_started is None or now - self._probe_started >= self.reset:
                return 0.0
            if self._probe_id in _held_probes.get():
                return 0.0
            return PROBE_POLL_INTERVAL

    def open_error(self, state: BreakerState, retry_in: float) -> CircuitOpenError:
        return CircuitOpenError(
            f"circuit breaker for {self.name} is {state.value}: the server failed "
            f"{self.failures} consecutive connection attempts and has not answered a probe "
            f"since; failing fast "
            f"(next probe in {retry_in:.1f}s)",
            hint="tune POOLGUARD_BREAKER_FAILURES / POOLGUARD_BREAKER_RESET",
        )

    def record_success(self) -> None:
        """The server answered (even with an error that is not about connecting)."""
        # Lock-free fast path for the common case: nothing to reset. CLOSED implies no probe
        # is pending; a failure racing this read is simply ordered after this success.
        if (self._consecutive == 0 and self._state is CLOSED) or self.failures is None:
            return
        with self._lock:
            self._consecutive = 0
            self._probe_started = None
            old = self._state
            self._state = BreakerState.CLOSED
            self._interval = min(self.reset, FIRST_OPEN_INTERVAL)
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
                if probe_failed:  # still down: back off the probes, up to ``reset``
                    self._interval = min(self.reset, self._interval * 2)
                changed = (self._state, BreakerState.OPEN)
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._probe_started = None
        if changed:
            self._notify(*changed)

    def reconfigure(self, failures: int | None, reset: float) -> None:
        """New thresholds (live reconfiguration); the state carries over.

        An open breaker stays open (its current open interval capped at the new ``reset``), a
        closed one keeps its count of consecutive failures (a lower ``failures`` opens it at
        the next failure once reached). ``failures=None`` disables the breaker: it closes.
        """
        if failures is not None and failures < 1:
            raise ValueError("breaker failures must be >= 1 (or None to disable)")
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            self.reset = reset
            self._interval = min(self._interval, reset)
            self.failures = failures
            if failures is None:
                self._consecutive = 0
                self._probe_started = None
                if self._state is not BreakerState.CLOSED:
                    changed = (self._state, BreakerState.CLOSED)
                    self._state = BreakerState.CLOSED
        if changed:
            self._notify(*changed)

    def _notify(self, old: BreakerState, new: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(old, new)
