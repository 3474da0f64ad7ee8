"""Per-pool counters, acquire-wait percentiles, hooks and structured logging.

One :class:`PoolStats` per guarded pool. Counters are a ``Counter`` under a lock (cheap: a dict
increment); acquire waits go to a bounded reservoir so percentiles cost nothing on the hot path.
``snapshot()`` returns a plain dict (JSON-friendly) merged with the integration's live gauges
(size, checked_out, idle, waiting).

Hooks receive frozen event dataclasses; a hook that raises is logged and ignored — observability
must never break a request. Log records go to the ``poolguard.<backend>`` logger with structured
``extra`` fields (:data:`LOG_FIELDS`, the same on every event record; ``poolguard/logs.py`` turns
them into JSON lines); messages carry redacted URLs only.

The process-wide registry: every PoolStats adds itself to a weak set when it is made
(:func:`registered`), and :func:`add_listener` callbacks receive every pool's events as
:class:`PoolEvent` — so an exporter set up once (``metrics/otel.py``) covers the pools made before
and after it. With no listener an event costs one empty-tuple check more than before. While
:func:`set_sampling` is on, each PoolStats also keeps :class:`Samples` (acquire wait, connect
time, use time) in bounded deques for an exporter to drain; off, a sample costs a ``None`` check.

:class:`PoolStats` and :class:`Hooks` (with the event classes it passes); users reach a
snapshot through ``poolguard.stats()`` (``poolguard/_stats.py``) or ``poolguard/metrics/``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Number of recent acquire waits kept for percentiles.
WAIT_RESERVOIR = 2048

#: "keepalive": the background keepalive found an idle connection dead (``POOLGUARD_KEEPALIVE``).
EVICTION_REASONS = ("lifetime", "idle", "validation", "disconnect", "timeout", "keepalive")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Handed to ``on_retry`` hooks before each backoff sleep."""

    pool: str
    attempt: int
    """The attempt that failed (1 = the first try)."""
    reason: str
    delay: float
    error: BaseException


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    pool: str
    reason: str
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class EvictEvent:
    pool: str
    reason: str
    """One of EVICTION_REASONS."""
    age: float
    idle: float


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    pool: str
    old: str
    new: str


#: What :class:`PoolEvent.kind` can be.
EVENT_KINDS = (
    "retry",
    "transaction_rerun",
    "disconnect",
    "evict",
    "breaker",
    "give_up",
    "ambiguous",
    "acquire_timeout",
)

#: The ``extra`` fields every event log record carries (None where they do not apply).
LOG_FIELDS = ("event", "pool", "backend", "target", "attempt", "reason", "delay", "disposition")


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """What :func:`add_listener` callbacks receive: one record per event of any pool."""

    kind: str
    """One of EVENT_KINDS. ``transaction_rerun`` is a retry of a whole unit of work
    (``run_transaction`` / ``pool.transaction``); ``give_up`` also covers a retry refused by
    the exhausted retry budget (``why`` says so)."""
    pool: str
    backend: str
    target: str | None = None
    """Redacted ``host:port`` (never a password), as in error messages."""
    attempt: int | None = None
    reason: str | None = None
    delay: float | None = None
    disposition: str | None = None
    """The failure's classification (``core/disposition.py``: retry, retry_if_idempotent,
    retry_transaction, ambiguous, fail)."""
    why: str | None = None
    old: str | None = None
    """Breaker transitions: the state left (``reason`` is the new one)."""
    age: float | None = None
    idle: float | None = None
    waited: float | None = None
    error: BaseException | None = None

    def fields(self) -> dict[str, Any]:
        """The structured fields (LOG_FIELDS, then the kind's own when set), no error object."""
        out: dict[str, Any] = {
            "event": self.kind,
            "pool": self.pool,
            "backend": self.backend,
            "target": self.target,
            "attempt": self.attempt,
            "reason": self.reason,
            "delay": self.delay,
            "disposition": self.disposition,
        }
        for key in ("why", "old", "age", "idle", "waited"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.error is not None:
            out["error_type"] = type(self.error).__name__
        return out


Listener = Callable[[PoolEvent], Any]

# -- the process-wide registry ----------------------------------------------------------------
_registry: weakref.WeakSet[PoolStats] = weakref.WeakSet()
_registry_lock = threading.Lock()
#: A tuple, replaced (never mutated) under the lock: events read it without locking.
_listeners: tuple[Listener, ...] = ()
_sampling: int | None = None


def registered() -> list[PoolStats]:
    """Every live PoolStats of the process (one per guarded pool, made before or after)."""
    with _registry_lock:
        return list(_registry)


def add_listener(listener: Listener) -> None:
    """Call ``listener(event)`` for every event of every pool (in the thread or task that had
    the event, so a span of that request is current). A listener that raises is logged and
    ignored."""
    global _listeners
    with _registry_lock:
        _listeners = (*_listeners, listener)


def remove_listener(listener: Listener) -> None:
    global _listeners
    with _registry_lock:
        _listeners = tuple(x for x in _listeners if x != listener)  # bound methods: ==


def set_sampling(maxlen: int | None) -> None:
    """Keep up to ``maxlen`` timing samples of each kind per pool between drains (every pool,
    present and future); None: stop sampling and drop the samples."""
    global _sampling
    with _registry_lock:
        _sampling = maxlen
        pools = list(_registry)
    for stats in pools:
        stats.sink = None if maxlen is None else Samples(maxlen)


class Samples:
    """Timing samples (seconds) waiting for an exporter: appended lock-free on the hot path
    (``deque.append`` is atomic), the oldest dropped beyond ``maxlen`` per drain interval."""

    __slots__ = ("create", "maxlen", "use", "wait")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.wait: deque[float] = deque(maxlen=maxlen)
        self.create: deque[float] = deque(maxlen=maxlen)
        self.use: deque[float] = deque(maxlen=maxlen)

    @staticmethod
    def drain(samples: deque[float]) -> list[float]:
        """Take what is there now; appends racing with the drain stay for the next one."""
        out = []
        for _ in range(len(samples)):
            try:
                out.append(samples.popleft())
            except IndexError:  # pragma: no cover - only this drain pops
                break
        return out


@dataclass
class Hooks:
    """Callbacks for custom integrations; each list may hold several."""

    on_retry: list[Callable[[RetryEvent], Any]] = field(default_factory=list)
    on_disconnect: list[Callable[[DisconnectEvent], Any]] = field(default_factory=list)
    on_evict: list[Callable[[EvictEvent], Any]] = field(default_factory=list)
    on_breaker: list[Callable[[BreakerEvent], Any]] = field(default_factory=list)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


def _value(counter: itertools.count[int]) -> int:
    # The repr, "count(42)", is the one public view of a count's next value.
    return int(repr(counter)[6:-1])


class PoolStats:
    """Counters and events of one pool."""

    def __init__(
        self,
        name: str,
        backend: str,
        *,
        hooks: Hooks | None = None,
        gauges: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.hooks = hooks or Hooks()
        self.gauges = gauges
        self.log = logging.getLogger(f"poolguard.{backend}")
        self._counters: dict[str, itertools.count[int]] = {}
        self._waits: deque[float] = deque(maxlen=WAIT_RESERVOIR)
        self._lock = threading.Lock()
        self.breaker_state = "closed"
        self.target: str | None = None
        """Redacted ``host:port`` for event records (set by the Guard; never a password)."""
        with _registry_lock:
            _registry.add(self)
            sampling = _sampling
        self.sink: Samples | None = None if sampling is None else Samples(sampling)

    # -- counting ---------------------------------------------------------------------------
    # Counters are ``itertools.count`` objects: ``next()`` runs in C without releasing the GIL,
    # so counting is atomic with no lock on the hot path (a locked Counter cost ~0.3 us per
    # increment, a third of the whole no-failure retry-loop overhead).
    def incr(self, key: str, n: int = 1) -> None:
        counter = self._counters.get(key)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(key, itertools.count())
        if n == 1:
            next(counter)
        elif n > 1:
            deque(itertools.islice(counter, n), maxlen=0)  # n atomic steps, at C speed
        elif n < 0:
            raise ValueError("counters only go up")

    def counter(self, key: str) -> Callable[[], object]:
        """A pre-bound ``incr(key)`` for hot paths: one C call, no lookup."""
        with self._lock:
            counter = self._counters.setdefault(key, itertools.count())
        return functools.partial(next, counter)

    def count(self, key: str) -> int:
        counter = self._counters.get(key)
        return 0 if counter is None else _value(counter)

    def record_wait(self, seconds: float) -> None:
        self._waits.append(seconds)  # deque.append is atomic under the GIL
        sink = self.sink
        if sink is not None:
            sink.wait.append(seconds)

    def record_create(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open (kept only while sampling)."""
        sink = self.sink
        if sink is not None:
            sink.create.append(seconds)

    # -- events -----------------------------------------------------------------------------
    def retry(
        self,
        attempt: int,
        reason: str,
        delay: float,
        error: BaseException,
        *,
        disposition: str | None = None,
        rerun: bool = False,
    ) -> None:
        """Before each backoff sleep; ``rerun``: the retry re-runs a whole unit of work."""
        self.incr("retries")
        self.incr(f"retries.{reason}")
        if rerun:
            self.incr("transaction_reruns")
        self._emit(
            logging.INFO,
            ("re-running the transaction after %s (attempt %d failed, sleeping %.3fs)"
             if rerun else "retrying after %s (attempt %d failed, sleeping %.3fs)"),
            (reason, attempt, delay),
            "transaction_rerun" if rerun else "retry",
            attempt=attempt, reason=reason, delay=delay, disposition=disposition, error=error,
        )  # fmt: skip
        self._fire(self.hooks.on_retry, RetryEvent(self.name, attempt, reason, delay, error))

    def give_up(
        self,
        attempt: int,
        reason: str,
        why: str,
        error: BaseException,
        *,
        disposition: str | None = None,
        budget: bool = False,
    ) -> None:
        """The operation stops retrying and raises; ``budget``: the retry budget refused it."""
        self.incr("give_ups")
        if budget:
            self.incr("budget_exhausted")
        self._emit(
            logging.WARNING,
            "giving up after attempt %d (%s): %s",
            (attempt, reason, why),
            "give_up",
            attempt=attempt, reason=reason, disposition=disposition, why=why, error=error,
        )  # fmt: skip

    def ambiguous(
        self,
        attempt: int | None,
        reason: str,
        error: BaseException,
        *,
        disposition: str | None = None,
    ) -> None:
        """The outcome is unknown (AmbiguousResultError): never retried. ``attempt`` None: a
        lost COMMIT reply, seen outside the retry loop."""
        self.incr("ambiguous")
        self._emit(
            logging.WARNING,
            "outcome unknown after attempt %s (%s): not retried",
            (attempt, reason),
            "ambiguous",
            attempt=attempt, reason=reason, disposition=disposition, error=error,
        )  # fmt: skip

    def acquire_timeout(self, waited: float) -> None:
        """No connection became free in time (the pool's PoolTimeout)."""
        self.incr("acquire_timeouts")
        self._emit(
            logging.INFO,
            "no connection became free within %.3fs",
            (waited,),
            "acquire_timeout",
            reason="pool_timeout", waited=waited,
        )  # fmt: skip

    def disconnect(self, reason: str, error: BaseException | None = None) -> None:
        self.incr("disconnects")
        self._emit(
            logging.INFO, "connection lost: %s", (reason,), "disconnect", reason=reason,
            error=error,
        )  # fmt: skip
        self._fire(self.hooks.on_disconnect, DisconnectEvent(self.name, reason, error))

    def evict(self, reason: str, age: float = 0.0, idle: float = 0.0) -> None:
        self.incr(f"evictions.{reason}")
        self._emit(
            logging.DEBUG,
            "evicted a connection (%s, age %.1fs, idle %.1fs)",
            (reason, age, idle),
            "evict",
            reason=reason, age=age, idle=idle,
        )  # fmt: skip
        self._fire(self.hooks.on_evict, EvictEvent(self.name, reason, age, idle))

    def breaker_changed(self, old: str, new: str) -> None:
        self.breaker_state = new
        self.incr(f"breaker.{new}")
        self.incr("breaker.transitions")
        self._emit(
            logging.WARNING, "circuit breaker %s -> %s", (old, new), "breaker", reason=new, old=old
        )
        self._fire(self.hooks.on_breaker, BreakerEvent(self.name, old, new))

    def _emit(self, level: int, msg: str, args: tuple[Any, ...], kind: str, **fields: Any) -> None:
        """Log the event with the structured fields and hand it to the global listeners; the
        record is built only when one of them will see it."""
        listeners = _listeners
        logged = self.log.isEnabledFor(level)
        if not listeners and not logged:
            return
        event = PoolEvent(kind, self.name, self.backend, self.target, **fields)
        if logged:
            self.log.log(level, msg, *args, extra=event.fields())
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                self.log.exception("poolguard event listener %r raised; ignored", listener)

    def _fire(self, hooks: list[Callable[[Any], Any]], event: object) -> None:
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                self.log.exception("poolguard hook %r raised; ignored", hook)

    # -- snapshot ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A plain-dict view: counters, evictions/retries by reason, waits, live gauges."""
        with self._lock:
            counters = list(self._counters.items())
        counts = {key: _value(counter) for key, counter in counters}
        waits = sorted(self._waits)
        snap: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "size": 0,
            "checked_out": 0,
            "idle": 0,
            "waiting": 0,
        }
        for key in (
            "connects",
            "connect_failures",
            "validations",
            "validation_failures",
            "keepalive_pings",
            "keepalive_failures",
            "disconnects",
            "retries",
            "give_ups",
            "ambiguous",
            "requests",
            "budget_exhausted",
            "circuit_open_rejections",
            "acquire_timeouts",
            "transaction_reruns",
        ):
            snap[key] = counts.get(key, 0)
        snap["evictions"] = {r: counts.get(f"evictions.{r}", 0) for r in EVICTION_REASONS}
        snap["retries_by_reason"] = {
            k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("retries.")
        }
        snap["breaker"] = {
            "state": self.breaker_state,
            "opened": counts.get("breaker.open", 0),
            # Calls that waited (off the network) for a probe's outcome instead of failing fast.
            "waits": counts.get("breaker_waits", 0),
        }
        snap["breaker_transitions"] = counts.get("breaker.transitions", 0)
        snap["acquire_wait_ms"] = {
            "count": len(waits),
            "p50": _percentile(waits, 0.50) * 1000,
            "p95": _percentile(waits, 0.95) * 1000,
            "p99": _percentile(waits, 0.99) * 1000,
            "max": (waits[-1] * 1000) if waits else 0.0,
        }
        if self.gauges is not None:
            snap.update(self.gauges())
        return snap
