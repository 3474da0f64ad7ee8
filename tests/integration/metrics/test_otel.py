"""OpenTelemetry: poolguard's metrics and span events against real servers and real faults.

The SDK's in-memory metric reader and span exporter; opentelemetry-instrumentation-sqlalchemy
and -redis installed at the same time as poolguard's instrumentor.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from poolguard.metrics.otel import POOL_NAME, PoolguardInstrumentor

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Otel:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.tracers.get_tracer("test")

    def instrument(self) -> None:
        PoolguardInstrumentor().instrument(meter_provider=self.meters, tracer_provider=self.tracers)

    def points(self, name: str, pool: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, point) of metric ``name`` for ``pool`` in one fresh collection."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if attributes.get(POOL_NAME) == pool:
                            found.append((attributes, point))
        return found

    def value(self, name: str, pool: str, **attrs: str) -> Any:
        matching = [
            p for a, p in self.points(name, pool) if all(a.get(k) == v for k, v in attrs.items())
        ]
        assert len(matching) == 1, (name, pool, attrs, matching)
        point = matching[0]
        return point if hasattr(point, "bucket_counts") else point.value

    def span(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans.get_finished_spans() if s.name == name]
        return span


@pytest.fixture
def app_name() -> str:
    """Tags this test's PostgreSQL sessions, so kills hit no one else's."""
    return f"otel_{os.getpid()}_{next(_ids)}"


@pytest.fixture
def engine_connect_args(app_name: str) -> dict[str, Any]:
    return {"application_name": app_name}


_ids = itertools.count(1)


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    PoolguardInstrumentor().uninstrument()
    o.meters.shutdown()


def _poolguard_events(span: ReadableSpan, kind: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == f"poolguard.{kind}"]


def test_kill_under_concurrent_callers_retry_events_in_callers_spans(
    make_engine: Any, postgres_server: Any, app_name: str, otel: Otel
) -> None:
    """pg_terminate_backend of four callers' sessions: each caller's read is retried, and the
    retry is an event of that caller's span, with the SQLAlchemy instrumentation on too."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # Made before instrument(): still covered.
    engine = make_engine(postgres_server.url, name="otel_kill", pool_size=4)
    otel.instrument()
    # 0.66b2 declares sqlalchemy < 2.1 and refuses 2.1.9 unless told (it works: spans below).
    SQLAlchemyInstrumentor().instrument(
        engine=engine, tracer_provider=otel.tracers, skip_dep_check=True
    )
    callers = 4
    warmed = threading.Barrier(callers + 1)
    killed = threading.Barrier(callers + 1)
    results: dict[int, int] = {}

    def caller(i: int) -> None:
        with otel.tracer.start_as_current_span(f"caller-{i}"), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            warmed.wait()
            killed.wait()
            results[i] = conn.execute(text("SELECT :i"), {"i": i}).scalar_one()
            conn.commit()

    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        warmed.wait()
        assert postgres_server.kill_connections(application_name=app_name) == callers
        killed.wait()
        for t in threads:
            t.join()
    finally:
        SQLAlchemyInstrumentor().uninstrument()
    assert results == {i: i for i in range(callers)}
    for i in range(callers):
        (retry,) = _poolguard_events(otel.span(f"caller-{i}"), "retry")
        assert retry["poolguard.pool"] == "otel_kill"
        assert retry["poolguard.backend"] == "postgres"
        assert retry["poolguard.attempt"] == 1
        assert retry["poolguard.reason"]
        assert retry["poolguard.disposition"]
        assert "poolguard.delay" in retry
        assert postgres_server.password not in json.dumps(retry)
    # SQLAlchemy's instrumentation traced the statements at the same time.
    names = [s.name for s in otel.spans.get_finished_spans()]
    assert any(n.startswith("SELECT") for n in names), names
    retries = otel.points("poolguard.retries", "otel_kill")
    assert sum(p.value for _, p in retries) == callers
    assert all(a["poolguard.reason"] for a, _ in retries)


def test_run_transaction_rerun_is_its_own_span_event(
    make_engine: Any, postgres_server: Any, app_name: str, otel: Otel
) -> None:
    """A unit of work whose session is killed before COMMIT is re-run: ``transaction_rerun``."""
    otel.instrument()
    engine = make_engine(postgres_server.url, name="otel_txn")
    runs = []

    def unit(conn: Any) -> int:
        runs.append(1)
        value = int(conn.execute(text("SELECT 1")).scalar_one())
        if len(runs) == 1:
            postgres_server.kill_connections(application_name=app_name)
            conn.execute(text("SELECT 2"))  # the dead session: the unit is re-run
        return value

    with otel.tracer.start_as_current_span("unit"):
        assert poolguard.run_transaction(engine, unit) == 1
    (rerun,) = _poolguard_events(otel.span("unit"), "transaction_rerun")
    assert rerun["poolguard.attempt"] == 1
    assert otel.value("poolguard.transaction.reruns", "otel_txn") == 1


def test_pool_timeout_increments_timeouts_and_gauges_are_right(
    make_engine: Any, postgres_server: Any, otel: Otel
) -> None:
    otel.instrument()  # before the engine: covered too
    engine = make_engine(
        postgres_server.url, name="otel_timeout", pool_size=2, max_overflow=1, acquire_timeout=0.2
    )
    held = [engine.connect() for _ in range(3)]
    with otel.tracer.start_as_current_span("starved"), pytest.raises(poolguard.PoolTimeout):
        engine.connect()
    assert otel.value("db.client.connection.timeouts", "otel_timeout") == 1
    assert _poolguard_events(otel.span("starved"), "acquire_timeout")
    assert otel.value("db.client.connection.count", "otel_timeout", **{
        "db.client.connection.state": "used"}) == 3  # fmt: skip
    assert otel.value("db.client.connection.max", "otel_timeout") == 3
    assert otel.value("db.client.connection.idle.max", "otel_timeout") == 2
    assert otel.value("db.client.connection.pending_requests", "otel_timeout") == 0
    held.pop().close()
    held.pop().close()
    assert _count(otel, "otel_timeout") == (1, 2)
    held.pop().close()
    assert _count(otel, "otel_timeout") == (0, 2)  # the third, beyond pool_size, was closed


def _count(otel: Otel, pool: str) -> tuple[int, int]:
    """(used, idle) of db.client.connection.count."""
    state = "db.client.connection.state"
    return (
        otel.value("db.client.connection.count", pool, **{state: "used"}),
        otel.value("db.client.connection.count", pool, **{state: "idle"}),
    )


def test_histograms_count_every_checkout(
    make_engine: Any, postgres_server: Any, otel: Otel
) -> None:
    otel.instrument()
    engine = make_engine(postgres_server.url, name="otel_hist", pool_size=2)
    for _ in range(5):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    wait = otel.value("db.client.connection.wait_time", "otel_hist")
    use = otel.value("db.client.connection.use_time", "otel_hist")
    create = otel.value("db.client.connection.create_time", "otel_hist")
    assert (wait.count, use.count, create.count) == (5, 5, 1)
    assert use.sum > 0
    assert create.sum > 0
    # Drained: the next collection (cumulative) adds only new samples.
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert otel.value("db.client.connection.wait_time", "otel_hist").count == 6


def test_redis_client_metrics_and_retry_event(redis_server: Any, otel: Otel) -> None:
    """A Redis restart: the GET in the caller's span reconnects with retries, and the retries
    are events of the Redis instrumentation's own GET span (instrument_client: the global
    instrument() wraps redis.Redis.execute_command, which poolguard's client overrides)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    otel.instrument()
    client = poolguard.redis.from_url(
        redis_server.url, name="otel_redis", pool_size=4, retry_backoff_initial=0.05
    )
    RedisInstrumentor.instrument_client(client, tracer_provider=otel.tracers)
    restart = threading.Thread(target=redis_server.restart, kwargs={"downtime": 0.5})
    try:
        client.set("otel:k", "v")
        restart.start()
        _until(lambda: not redis_server.running)
        with otel.tracer.start_as_current_span("redis-caller"):
            assert client.get("otel:k") == b"v"
    finally:
        restart.join()
        client.close()
    caller = otel.span("redis-caller")
    (get,) = [
        s
        for s in otel.spans.get_finished_spans()
        if s.name == "GET" and s.parent is not None and s.parent.span_id == caller.context.span_id
    ]
    retries = _poolguard_events(get, "retry")
    assert retries
    assert all(r["poolguard.pool"] == "otel_redis" for r in retries)
    assert [r["poolguard.attempt"] for r in retries] == list(range(1, len(retries) + 1))
    assert sum(p.value for _, p in otel.points("poolguard.retries", "otel_redis")) == len(retries)
    assert otel.value("db.client.connection.max", "otel_redis") == 4
    assert otel.value("db.client.connection.wait_time", "otel_redis").count >= 2
    assert redis_server.password not in json.dumps(retries) if redis_server.password else True


def _until(predicate: Any) -> None:
    for _ in range(2000):  # a hang guard, not a time bound
        if predicate():
            return
        threading.Event().wait(0.005)
    raise AssertionError("condition never became true")


def test_uninstrument_stops_and_twice_warns(
    make_engine: Any, postgres_server: Any, app_name: str, otel: Otel, caplog: Any
) -> None:
    otel.instrument()
    with caplog.at_level(logging.WARNING, logger="poolguard.otel"):
        otel.instrument()
    assert "already instrumented" in caplog.text
    engine = make_engine(postgres_server.url, name="otel_off")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert otel.points("db.client.connection.count", "otel_off")
    PoolguardInstrumentor().uninstrument()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        postgres_server.kill_connections(application_name=app_name)
        with otel.tracer.start_as_current_span("after"):
            conn.execute(text("SELECT 1"))  # retried, but nobody listens
    assert poolguard.stats(engine)["retries"] == 1
    assert otel.span("after").events == ()
    assert otel.points("db.client.connection.count", "otel_off") == []
    assert all(stats.sink is None for stats in poolguard.core.stats.registered())
    otel.instrument()  # again, same provider: its instruments observe again
    assert otel.points("db.client.connection.count", "otel_off")


def test_json_log_lines(make_engine: Any, postgres_server: Any, app_name: str) -> None:
    import poolguard.logs

    stream = io.StringIO()
    handler = poolguard.logs.configure_json(stream, "INFO")
    try:
        engine = make_engine(postgres_server.url, name="json_logs")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            postgres_server.kill_connections(application_name=app_name)
            conn.execute(text("SELECT 1"))
    finally:
        logging.getLogger("poolguard").removeHandler(handler)
        logging.getLogger("poolguard").propagate = True
    output = stream.getvalue()
    assert postgres_server.password not in output
    lines = [json.loads(line) for line in output.splitlines()]
    (retry,) = [line for line in lines if line.get("event") == "retry"]
    assert retry["pool"] == "json_logs"
    assert retry["backend"] == "postgres"
    assert retry["attempt"] == 1
    assert retry["reason"]
    assert retry["disposition"]
    assert isinstance(retry["delay"], float)
    assert retry["target"]
    assert "@" not in retry["target"]
    assert retry["ts"].endswith("+00:00")
    assert {"event", "pool", "backend", "target", "attempt", "reason", "delay", "disposition"} <= (
        set(retry)
    )


async def test_native_async_pool_timeout_gauges_and_retry_in_task_span(
    postgres_server: Any, app_name: str, otel: Otel
) -> None:
    """poolguard.postgres's asyncio pool: a pool timeout, its gauges, and a killed session's
    retried read as an event of the span of the task that ran it."""
    import poolguard.postgres

    otel.instrument()
    pool = poolguard.postgres.create_async_pool(
        postgres_server.url,
        name="otel_native",
        pool_size=1,
        max_overflow=1,
        acquire_timeout=0.2,
        kwargs={"application_name": app_name},
    )
    async with pool:
        await pool.wait(timeout=10)
        first, second = await pool.getconn(), await pool.getconn()
        with otel.tracer.start_as_current_span("starved"), pytest.raises(poolguard.PoolTimeout):
            await pool.getconn()
        assert otel.value("db.client.connection.timeouts", "otel_native") == 1
        assert _poolguard_events(otel.span("starved"), "acquire_timeout")
        assert _count(otel, "otel_native") == (2, 0)
        assert otel.value("db.client.connection.max", "otel_native") == 2
        assert otel.value("db.client.connection.idle.min", "otel_native") == 1
        await pool.putconn(first)
        await pool.putconn(second)
        assert otel.value("db.client.connection.use_time", "otel_native").count == 2
        assert otel.value("db.client.connection.create_time", "otel_native").count >= 2
        assert await pool.fetchval("SELECT 1") == 1
        assert postgres_server.kill_connections(application_name=app_name) >= 1
        with otel.tracer.start_as_current_span("native-read"):
            assert await pool.fetchval("SELECT 2") == 2
    events = otel.span("native-read").events
    assert [e.name for e in events if e.name != "poolguard.disconnect"][:1] == ["poolguard.retry"]
    assert otel.value("poolguard.retries", "otel_native", **{"poolguard.reason": "admin_shutdown"})


async def test_asyncio_engine_retry_event_in_task_span(
    make_async_engine: Any, postgres_server: Any, app_name: str, otel: Otel
) -> None:
    """The asyncio engine retries inside SQLAlchemy's greenlet: the event still reaches the span
    of the task that awaited the statement."""
    otel.instrument()
    engine = make_async_engine(postgres_server.url, name="otel_async")
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        assert postgres_server.kill_connections(application_name=app_name) == 1
        with otel.tracer.start_as_current_span("async-read"):
            assert (await conn.execute(text("SELECT 3"))).scalar_one() == 3
    (retry,) = _poolguard_events(otel.span("async-read"), "retry")
    assert retry["poolguard.pool"] == "otel_async"
    assert otel.value("poolguard.retries", "otel_async", **{"poolguard.reason": retry[
        "poolguard.reason"]}) == 1  # fmt: skip
