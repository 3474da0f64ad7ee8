"""Observability in one FastAPI app: request deadlines, OpenTelemetry, JSON logs, SIGHUP.

    pip install "poolguard[postgres,otel]" opentelemetry-sdk fastapi uvicorn
    export DATABASE_URL=postgres://app:secret@localhost/app
    export POOLGUARD_REQUEST_DEADLINE=2s        # each request's budget (required)
    uvicorn --app-dir examples observability_app:app --port 8000

    curl localhost:8000/items/count
    curl -H 'X-Request-Timeout: 0.5' localhost:8000/slow/3     # 504 after 0.5 s
    kill -HUP <pid>                                             # reload POOLGUARD_* settings

What it shows:

* ``ASGIDeadlineMiddleware``: each request runs under ``poolguard.deadline``; a client may shorten
  the budget with ``X-Request-Timeout`` / ``grpc-timeout``, never lengthen it. A spent budget is
  poolguard's timeout error, mapped to 504 by ``install_error_handlers`` (503 for a pool that is
  exhausted or a breaker that is open).
* ``PoolguardInstrumentor``: the ``db.client.connection.*`` pool metrics and ``poolguard.*``
  counters, exported to the console every ``OTEL_METRIC_EXPORT_INTERVAL`` ms (default 10 s),
  and poolguard's retries, evictions, breaker transitions and give-ups as events of each
  request's span (printed by the console span exporter when the span ends).
* ``poolguard.logs.configure_json()``: one JSON line per retry, eviction, breaker transition
  and give-up on stderr.
* ``poolguard.reload_on_sighup``: ``kill -HUP`` re-reads the ``POOLGUARD_*`` variables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import poolguard
import poolguard.logs
from poolguard.metrics.otel import PoolguardInstrumentor
from poolguard.web import ASGIDeadlineMiddleware, install_error_handlers

# --- telemetry: the SDK with console exporters (use OTLP exporters in production) ---------------
# The interval comes from OTEL_METRIC_EXPORT_INTERVAL (ms) when set, as the SDK documents.
metrics.set_meter_provider(
    MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())])
)
_spans = TracerProvider()
_spans.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(_spans)
PoolguardInstrumentor().instrument()  # every poolguard pool of the process, before or after this
poolguard.logs.configure_json()  # JSON lines on stderr: retry, evict, breaker, give_up ...
tracer = trace.get_tracer("observability_app")

# --- the database: DATABASE_URL and POOLGUARD_* from the environment ----------------------------
engine = poolguard.create_async_engine()  # its pool is named "default" in metrics and logs
Session = async_sessionmaker(engine)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    poolguard.reload_on_sighup(engine)  # opt-in; the main thread (uvicorn runs the app there)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY)"))
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
# The budget: POOLGUARD_REQUEST_DEADLINE; clients may shorten it with these headers.
app.add_middleware(ASGIDeadlineMiddleware, headers=["x-request-timeout", "grpc-timeout"])
install_error_handlers(app)  # poolguard's errors: timeouts -> 504, pool/breaker -> 503


@app.exception_handler(OperationalError)
async def backend_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
    """A database error poolguard could not hide (its retries or the retry budget ran out; the
    error keeps SQLAlchemy's type, annotated with why poolguard gave up): 503, not a 500."""
    return JSONResponse({"error": type(exc).__name__}, status_code=503)


@app.middleware("http")
async def request_span(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """One span per request, so poolguard's events have a span to land in (an ASGI
    instrumentation such as opentelemetry-instrumentation-fastapi does the same)."""
    with tracer.start_as_current_span(f"{request.method} {request.url.path}"):
        return await call_next(request)


@app.get("/items/count")
async def count_items() -> dict[str, int]:
    """An idempotent read: retried through restarts and killed sessions."""
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM items"))).scalar_one()
    return {"count": n}


@app.post("/items")
async def add_item() -> dict[str, int]:
    """A write as a unit of work: re-run only when it cannot have been applied; a lost COMMIT
    reply is resolved on the server (PostgreSQL) instead of surfacing as AmbiguousResultError."""

    async def insert(session: AsyncSession) -> int:
        result = await session.execute(text("INSERT INTO items DEFAULT VALUES RETURNING id"))
        return int(result.scalar_one())

    return {"id": await poolguard.run_transaction_async(Session, insert, resolve_ambiguous=True)}


@app.get("/slow/{seconds}")
async def slow(seconds: float) -> dict[str, float]:
    """A statement that outlives a short budget: 504 when the budget is spent."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"slept": seconds}


@app.get("/stats")
async def pool_stats() -> dict[str, object]:
    """The same numbers the exporters read (``poolguard.stats``)."""
    return poolguard.stats(engine)
