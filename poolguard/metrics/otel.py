"""OpenTelemetry metrics and span events for every guarded pool (``pip install "poolguard[otel]"``).

::

    from poolguard.metrics.otel import PoolguardInstrumentor

    PoolguardInstrumentor().instrument()            # global providers; or meter_provider=...
    ...
    PoolguardInstrumentor().uninstrument()

It follows the OpenTelemetry instrumentor convention (one process-wide instrumentor: a second
``instrument()`` is a no-op with a warning) and covers every engine, native pool and Redis client
of the process, made before or after the call: each pool's ``PoolStats`` registers itself in
``core/stats.py``'s weak registry, and the events reach this module through its global listeners.

**Metrics**, pull-style like ``metrics/prometheus.py``: observable instruments read one
``snapshot()`` per pool per collection (the first callback of a collection takes the snapshots,
the others reuse them), so counters and gauges cost nothing on the hot path. The OpenTelemetry
database conventions for connection pools (``db.client.connection.*``, labelled
``db.client.connection.pool.name`` = the pool's name, never a URL) plus ``poolguard.*`` (see
:data:`METRICS`).

The three duration histograms (``create_time``, ``wait_time``, ``use_time``) need every sample,
not a snapshot: while instrumented, the hot path appends the float to a bounded deque of the
pool's ``Samples`` (lock-free, ``deque.append``); the first observable callback of a collection
drains the deques into synchronous histograms. The SDK runs every asynchronous callback before
it collects its storage (``SynchronousMeasurementConsumer.collect``, opentelemetry-sdk 1.45), so
the drained samples are in that very collection. Beyond ``max_samples`` samples of one kind per
pool between two collections, the oldest are dropped (the counters stay exact).

**Span events**: each retry, ``run_transaction`` re-run, eviction, breaker transition, give-up,
ambiguous result and acquire timeout is added to ``trace.get_current_span()`` — the span that
``opentelemetry-instrumentation-sqlalchemy`` / ``-redis`` or the application has open in that
thread or task — as ``poolguard.<kind>`` with ``poolguard.*`` attributes (no URL, no password).
poolguard starts no span of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import TracerProvider

from poolguard.core import stats as core_stats
from poolguard.core.stats import PoolEvent, PoolStats, Samples

__all__ = ["DEFAULT_MAX_SAMPLES", "METRICS", "SPAN_EVENTS", "PoolguardInstrumentor"]

log = logging.getLogger("poolguard.otel")

#: Timing samples of each kind kept per pool between two collections (oldest dropped beyond).
DEFAULT_MAX_SAMPLES = 4096

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: name -> (instrument kind, unit, description). Every metric carries POOL_NAME.
METRICS: dict[str, tuple[str, str, str]] = {
    "db.client.connection.count": (
        "updown", "{connection}", "Connections open, by db.client.connection.state (idle, used)",
    ),
    "db.client.connection.max": ("updown", "{connection}", "Most connections the pool opens"),
    "db.client.connection.idle.max": (
        "updown", "{connection}", "Most idle connections kept (SQLAlchemy: pool_size)",
    ),
    "db.client.connection.idle.min": (
        "updown", "{connection}", "Connections kept open when unused (psycopg_pool: min_size)",
    ),
    "db.client.connection.pending_requests": (
        "updown", "{request}", "Callers waiting for a connection",
    ),
    "db.client.connection.timeouts": (
        "counter", "{timeout}", "Checkouts that found no free connection in time (PoolTimeout)",
    ),
    "db.client.connection.create_time": ("histogram", "s", "Time to open a connection"),
    "db.client.connection.wait_time": ("histogram", "s", "Time to obtain a connection"),
    "db.client.connection.use_time": (
        "histogram", "s", "Time between checkout and return of a connection",
    ),
    "poolguard.retries": ("counter", "{retry}", "Retries, by poolguard.reason"),
    "poolguard.transaction.reruns": (
        "counter", "{rerun}", "Whole units of work re-run (run_transaction / transaction())",
    ),
    "poolguard.give_ups": ("counter", "{operation}", "Operations that stopped retrying"),
    "poolguard.ambiguous": (
        "counter", "{operation}", "Operations whose outcome is unknown (AmbiguousResultError)",
    ),
    "poolguard.budget.exhausted": (
        "counter", "{retry}", "Retries refused by the retry budget (each also a give-up)",
    ),
    "poolguard.evictions": ("counter", "{connection}", "Connections retired, by poolguard.reason"),
    "poolguard.disconnects": ("counter", "{connection}", "Connections found dead"),
    "poolguard.breaker.state": (
        "updown", "1", "1 for the breaker's current poolguard.breaker.state, else 0",
    ),
    "poolguard.breaker.transitions": ("counter", "{transition}", "Circuit breaker transitions"),
    "poolguard.circuit_open.rejections": (
        "counter", "{operation}", "Calls failed fast by the open circuit breaker",
    ),
}  # fmt: skip

#: Span event names (``poolguard.`` + PoolEvent.kind).
SPAN_EVENTS = tuple(f"poolguard.{kind}" for kind in core_stats.EVENT_KINDS)

_BREAKER_STATES = ("closed", "open", "half_open")

Snap = dict[str, Any]
Reader = Callable[[list[Snap]], Iterable[Observation]]


def _merged(observations: Iterable[tuple[dict[str, str], float]]) -> Iterator[Observation]:
    """One observation per attribute set: pools sharing a name are added up (an exporter would
    otherwise keep only one of them)."""
    totals: dict[tuple[tuple[str, str], ...], float] = {}
    for attributes, value in observations:
        key = tuple(sorted(attributes.items()))
        totals[key] = totals.get(key, 0) + value
    for key, value in totals.items():
        yield Observation(value, dict(key))


def _count(snaps: list[Snap]) -> Iterator[tuple[dict[str, str], float]]:
    for s in snaps:
        yield {POOL_NAME: s["name"], STATE: "idle"}, s.get("idle", 0)
        yield {POOL_NAME: s["name"], STATE: "used"}, s.get("checked_out", 0)


def _key(key: str, fallback: str | None = None) -> Reader:
    """Observations of one snapshot number; pools without it (and no fallback) are skipped."""

    def read(snaps: list[Snap]) -> Iterator[Observation]:
        def pairs() -> Iterator[tuple[dict[str, str], float]]:
            for s in snaps:
                value = s.get(key, s.get(fallback) if fallback else None)
                if isinstance(value, int | float):
                    yield {POOL_NAME: s["name"]}, value

        return _merged(pairs())

    return read


def _by_reason(key: str) -> Reader:
    def read(snaps: list[Snap]) -> Iterator[Observation]:
        return _merged(
            ({POOL_NAME: s["name"], "poolguard.reason": reason}, n)
            for s in snaps
            for reason, n in s[key].items()
        )

    return read


def _breaker_state(snaps: list[Snap]) -> Iterator[Observation]:
    return _merged(
        (
            {POOL_NAME: s["name"], "poolguard.breaker.state": state},
            int(s["breaker"]["state"] == state),
        )
        for s in snaps
        for state in _BREAKER_STATES
    )


_READERS: dict[str, Reader] = {
    "db.client.connection.count": lambda snaps: _merged(_count(snaps)),
    "db.client.connection.max": _key("max", "max_size"),
    "db.client.connection.idle.max": _key("idle_max"),
    "db.client.connection.idle.min": _key("idle_min"),
    "db.client.connection.pending_requests": _key("waiting"),
    "db.client.connection.timeouts": _key("acquire_timeouts"),
    "poolguard.retries": _by_reason("retries_by_reason"),
    "poolguard.transaction.reruns": _key("transaction_reruns"),
    "poolguard.give_ups": _key("give_ups"),
    "poolguard.ambiguous": _key("ambiguous"),
    "poolguard.budget.exhausted": _key("budget_exhausted"),
    "poolguard.evictions": _by_reason("evictions"),
    "poolguard.disconnects": _key("disconnects"),
    "poolguard.breaker.state": _breaker_state,
    "poolguard.breaker.transitions": _key("breaker_transitions"),
    "poolguard.circuit_open.rejections": _key("circuit_open_rejections"),
}

_HISTOGRAMS = {
    "db.client.connection.create_time": "create",
    "db.client.connection.wait_time": "wait",
    "db.client.connection.use_time": "use",
}


class _Instruments:
    """The instruments of one meter; callbacks observe only while ``active``."""

    def __init__(self, meter: Meter) -> None:
        self.active = False
        self._snaps: list[tuple[PoolStats, Snap]] = []
        self.histograms: dict[str, Histogram] = {}
        for name, (kind, unit, doc) in METRICS.items():
            if kind == "histogram":
                self.histograms[name] = meter.create_histogram(name, unit=unit, description=doc)
        observables = [(n, spec) for n, spec in METRICS.items() if spec[0] != "histogram"]
        for i, (name, (kind, unit, doc)) in enumerate(observables):
            # The SDK calls callbacks in registration order: the first one of each collection
            # (db.client.connection.count) takes the snapshots and drains the samples.
            make = (
                meter.create_observable_counter
                if kind == "counter"
                else meter.create_observable_up_down_counter
            )
            make(name, callbacks=[self._callback(name, first=i == 0)], unit=unit, description=doc)

    def _callback(
        self, name: str, *, first: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        reader = _READERS[name]

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return ()
            if first:
                self._collect()
            return list(reader([snap for _, snap in self._snaps]))

        return callback

    def _collect(self) -> None:
        pools = core_stats.registered()
        self._snaps = [(stats, stats.snapshot()) for stats in pools]
        for name, attr in _HISTOGRAMS.items():
            histogram = self.histograms[name]
            for stats in pools:
                sink = stats.sink
                if sink is None:
                    continue
                attributes = {POOL_NAME: stats.name}
                for value in Samples.drain(getattr(sink, attr)):
                    histogram.record(value, attributes)


def _span_event(event: PoolEvent) -> None:
    """Global listener: the event on the caller's current span, if one is recording."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str | int | float] = {
        "poolguard.pool": event.pool,
        "poolguard.backend": event.backend,
    }
    for key in ("target", "attempt", "reason", "delay", "disposition", "why", "old", "waited"):
        value = getattr(event, key)
        if value is not None:
            attributes[f"poolguard.{key}"] = value
    if event.error is not None:
        attributes["error.type"] = type(event.error).__name__
    span.add_event(f"poolguard.{event.kind}", attributes)


class PoolguardInstrumentor:
    """Process-wide OpenTelemetry instrumentation of every guarded pool (a singleton, like
    OpenTelemetry's own instrumentors)."""

    _instance: ClassVar[PoolguardInstrumentor | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __new__(cls) -> PoolguardInstrumentor:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._instrumented = False
                instance._meters = {}
                instance._current = None
                cls._instance = instance
            return cls._instance

    _instrumented: bool
    _meters: dict[int, tuple[MeterProvider, _Instruments]]
    _current: _Instruments | None

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._instrumented

    def instrument(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        **_kwargs: Any,
    ) -> None:
        """Start exporting: metrics to ``meter_provider`` (default: the global one), span events
        on the current span (``tracer_provider`` is accepted for the convention: poolguard
        starts no span, it adds events to whichever span is current, whatever made it)."""
        del tracer_provider
        with self._lock:
            if self._instrumented:
                log.warning("poolguard is already instrumented; instrument() ignored")
                return
            provider = meter_provider or metrics.get_meter_provider()
            known = self._meters.get(id(provider))
            if known is None:
                # Instruments cannot be removed from a meter: made once per provider, they
                # observe nothing while uninstrumented.
                from poolguard import __version__

                meter = provider.get_meter("poolguard", __version__)
                known = (provider, _Instruments(meter))
                self._meters[id(provider)] = known
            self._current = known[1]
            self._current.active = True
            core_stats.set_sampling(max_samples)
            core_stats.add_listener(_span_event)
            self._instrumented = True

    def uninstrument(self, **_kwargs: Any) -> None:
        """Stop: no more span events, samples or observations (instruments stay registered but
        report nothing)."""
        with self._lock:
            if not self._instrumented:
                return
            core_stats.remove_listener(_span_event)
            core_stats.set_sampling(None)
            if self._current is not None:
                self._current.active = False
            self._current = None
            self._instrumented = False
