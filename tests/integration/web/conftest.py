"""Apps for the request-deadline tests: the same endpoints on FastAPI (sync and async) and Flask.

Every app has a read, a write, a ``run_transaction`` unit and a ``/budget`` endpoint that
answers what ``poolguard`` sees as the request's remaining budget, all behind poolguard.web's
middleware, with ``install_error_handlers`` mapping poolguard's errors to 503/504.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

import poolguard
from poolguard.core.deadline import remaining
from poolguard.web import (
    ASGIDeadlineMiddleware,
    WSGIDeadlineMiddleware,
    install_error_handlers,
    status_for,
)

#: The default request budget of the apps (seconds).
BUDGET = 1.5
#: How far past its budget a request may end: a safety bound against hangs, not a speed limit.
GRACE = 5.0
#: The HTTP client's own timeout: a request the middleware failed to bound fails the test here.
CLIENT_TIMEOUT = 30.0
#: Both budget headers are trusted by the apps.
HEADERS = ("x-request-timeout", "grpc-timeout")
#: Short connect/acquire timeouts and backoff, as the other fault suites use.
ENGINE_OPTIONS: dict[str, Any] = {
    "connect_timeout": 1.0,
    "acquire_timeout": 2.0,
    "retry_backoff_initial": 0.02,
    "retry_backoff_max": 0.2,
}
#: Endpoints every app has, per mode; ``tx`` is a run_transaction unit of two inserts.
ENDPOINTS = (("GET", "read"), ("POST", "write"), ("POST", "tx"))
TIMEOUT_ERRORS = {"QueryTimeout", "TransactionTimeout", "ConnectTimeout", "PoolTimeout"}
#: What a request on a frozen server may end with: a timeout, or the breaker's fail-fast when it
#: opened while the request's connect attempt used up the budget (core/retry.py reports the
#: breaker then, not the deadline; status_for still answers 504 as the budget is spent).
BOUNDED_ERRORS = TIMEOUT_ERRORS | {"CircuitOpenError"}


def schema(url: str) -> None:
    engine = poolguard.create_engine(url, **ENGINE_OPTIONS)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, n int)"))
    finally:
        engine.dispose()


def _insert(session: Session) -> int:
    session.execute(text("INSERT INTO items (n) VALUES (1), (2)"))
    return 2


async def _ainsert(session: AsyncSession) -> int:
    await session.execute(text("INSERT INTO items (n) VALUES (1), (2)"))
    return 2


def fastapi_app(url: str, **middleware: Any) -> Any:
    """FastAPI app: /sync/* are ``def`` endpoints (thread pool), /async/* are ``async def``."""
    from fastapi import FastAPI

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The async engine belongs to the server's event loop: make it there.
        state["engine"] = poolguard.create_engine(url, **ENGINE_OPTIONS)
        state["aengine"] = poolguard.create_async_engine(url, **ENGINE_OPTIONS)
        state["sessions"] = sessionmaker(state["engine"])
        state["asessions"] = async_sessionmaker(state["aengine"])
        try:
            yield
        finally:
            state["engine"].dispose()
            await state["aengine"].dispose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(ASGIDeadlineMiddleware, **{"seconds": BUDGET, **middleware})
    install_error_handlers(app)

    @app.get("/sync/read")
    def read() -> dict[str, Any]:
        with state["engine"].connect() as conn:
            return {"n": conn.scalar(text("SELECT count(*) FROM items"))}

    @app.post("/sync/write")
    def write() -> dict[str, Any]:
        with state["engine"].begin() as conn:
            conn.execute(text("INSERT INTO items (n) VALUES (0)"))
        return {"ok": True}

    @app.post("/sync/tx")
    def tx() -> dict[str, Any]:
        return {"rows": poolguard.run_transaction(state["sessions"], _insert)}

    @app.get("/sync/budget")
    def budget() -> dict[str, Any]:
        return {"remaining": remaining(), "thread": threading.current_thread().name}

    @app.get("/sync/stream")
    def stream() -> Any:
        from starlette.responses import StreamingResponse

        def chunks() -> Iterator[str]:  # Starlette iterates it in the thread pool
            for _ in range(2):
                yield f"{remaining()}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/async/stream")
    async def astream() -> Any:
        from starlette.responses import StreamingResponse

        async def chunks() -> AsyncIterator[str]:
            for _ in range(2):
                yield f"{remaining()}\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/async/read")
    async def aread() -> dict[str, Any]:
        async with state["aengine"].connect() as conn:
            return {"n": await conn.scalar(text("SELECT count(*) FROM items"))}

    @app.post("/async/write")
    async def awrite() -> dict[str, Any]:
        async with state["aengine"].begin() as conn:
            await conn.execute(text("INSERT INTO items (n) VALUES (0)"))
        return {"ok": True}

    @app.post("/async/tx")
    async def atx() -> dict[str, Any]:
        return {"rows": await poolguard.run_transaction_async(state["asessions"], _ainsert)}

    @app.get("/async/budget")
    async def abudget() -> dict[str, Any]:
        return {"remaining": remaining(), "thread": threading.current_thread().name}

    return app


def flask_app(engine: Engine, **middleware: Any) -> Any:
    """Flask app with the same endpoints, plus /stream: one query per streamed chunk."""
    from flask import Flask

    app = Flask(__name__)
    app.wsgi_app = WSGIDeadlineMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, **{"seconds": BUDGET, **middleware}
    )
    install_error_handlers(app)
    sessions = sessionmaker(engine)

    @app.get("/sync/read")
    def read() -> dict[str, Any]:
        with engine.connect() as conn:
            return {"n": conn.scalar(text("SELECT count(*) FROM items"))}

    @app.post("/sync/write")
    def write() -> dict[str, Any]:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO items (n) VALUES (0)"))
        return {"ok": True}

    @app.post("/sync/tx")
    def tx() -> dict[str, Any]:
        return {"rows": poolguard.run_transaction(sessions, _insert)}

    @app.get("/sync/budget")
    def budget() -> dict[str, Any]:
        return {"remaining": remaining()}

    @app.get("/sync/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            # Runs while the server sends the body, after the view returned.
            for _ in range(3):
                with engine.connect() as conn:
                    yield f"{conn.scalar(text('SELECT count(*) FROM items'))}\n"

        return app.response_class(chunks(), mimetype="text/plain")

    return app


@dataclass
class Outcome:
    """One request as the client saw it."""

    path: str
    status: int
    body: Any
    elapsed: float

    @property
    def error(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None


def check_bounded_failure(outcome: Outcome, budget: float = BUDGET) -> None:
    """Failed with one of poolguard's errors, mapped by status_for, within budget + grace."""
    assert outcome.error in BOUNDED_ERRORS, outcome
    error = getattr(poolguard, outcome.error)("x")
    # PoolTimeout / CircuitOpenError: 504 when raised at the spent budget, 503 before it.
    expected = {status_for(error, spent=True), status_for(error, spent=False)}
    assert outcome.status in expected, outcome
    assert outcome.elapsed <= budget + GRACE, outcome


def while_frozen(pg: Any, call: Any, plan: list[tuple[str, str, dict[str, str]]]) -> list[Outcome]:
    """Run ``call(*request)`` for the plan from one thread each while ``pg`` is frozen.

    The server is thawed after CLIENT_TIMEOUT whatever happened, so an unbounded request
    fails the test instead of hanging it.
    """
    pool = ThreadPoolExecutor(len(plan))
    with pg.frozen():
        futures = [pool.submit(call, *request) for request in plan]
        _, pending = wait(futures, timeout=CLIENT_TIMEOUT)
    pool.shutdown(wait=True)
    assert not pending, f"{len(pending)} of {len(plan)} requests still running after the budget"
    return [future.result() for future in futures]


def until_healthy(call: Any, paths: list[tuple[str, str]], *, within: float = 60.0) -> None:
    """Every path answers 200, three rounds in a row, before ``within`` (a hang guard)."""
    stop = time.monotonic() + within
    good_rounds = 0
    last: list[Any] = []
    while good_rounds < 3:
        assert time.monotonic() < stop, f"not healthy after thaw: {last}"
        last = [call(method, path) for method, path in paths]
        good_rounds = good_rounds + 1 if all(o.status == 200 for o in last) else 0


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """A real uvicorn server in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    from poolguard.testing import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    stop_at = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > stop_at:
            server.should_exit = True
            raise RuntimeError("uvicorn did not start the app (its log says why)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def frozen_pg(dedicated_server: Any) -> Any:
    """A dedicated PostgreSQL with the items table; the test freezes and thaws it."""
    pg = dedicated_server("postgres")
    schema(pg.url)
    return pg


async def gather_async(base: str, requests: list[tuple[str, str, dict[str, str]]]) -> list[Outcome]:
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT) as client:

        async def one(method: str, path: str, headers: dict[str, str]) -> Outcome:
            start = time.monotonic()
            response = await client.request(method, path, headers=headers)
            return Outcome(path, response.status_code, _json(response), time.monotonic() - start)

        return list(await asyncio.gather(*(one(m, p, h) for m, p, h in requests)))


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
