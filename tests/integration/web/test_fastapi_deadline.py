"""ASGIDeadlineMiddleware on FastAPI against a frozen PostgreSQL (SIGSTOP), under uvicorn and
Starlette's TestClient: each request ends by its budget + grace with poolguard's timeout error
mapped to 503/504, ``def`` endpoints in the thread pool see the deadline, header budgets shorten
the default but never lengthen it, and the pool serves again after the thaw.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the test extra (pip install -e .[test])")
pytest.importorskip("httpx", reason="needs the test extra")
pytest.importorskip("uvicorn", reason="needs the test extra")

import httpx

from .conftest import (
    BUDGET,
    CLIENT_TIMEOUT,
    ENDPOINTS,
    HEADERS,
    Outcome,
    check_bounded_failure,
    fastapi_app,
    gather_async,
    serve,
    until_healthy,
)

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

MODES = ("sync", "async")
PATHS = [(method, f"/{mode}/{name}") for mode in MODES for method, name in ENDPOINTS]


def _caller(client: httpx.Client) -> Any:
    def call(method: str, path: str, headers: dict[str, str] | None = None) -> Outcome:
        start = time.monotonic()
        response = client.request(method, path, headers=headers or {})
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Outcome(path, response.status_code, body, time.monotonic() - start)

    return call


def test_concurrent_requests_on_a_frozen_server_end_at_their_budget(frozen_pg: Any) -> None:
    """Threads and asyncio tasks, reads, writes and units of work, on a real uvicorn."""
    short = {"x-request-timeout": "0.3"}
    grpc = {"grpc-timeout": "400m"}
    no_headers: dict[str, str] = {}
    plan = [(m, p, no_headers) for m, p in PATHS] * 2
    plan += [("GET", "/sync/read", short), ("POST", "/async/tx", grpc)]
    budgets = {"0.3": 0.3, "400m": 0.4}

    def budget_of(headers: dict[str, str]) -> float:
        return min([budgets[v] for v in headers.values()] or [BUDGET])

    app = fastapi_app(frozen_pg.url, headers=HEADERS)
    with serve(app) as base, httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT) as client:
        call = _caller(client)
        for method, path in PATHS:
            assert call(method, path).status == 200, path
        with frozen_pg.frozen(), ThreadPoolExecutor(len(plan) + 1) as pool:
            tasks = pool.submit(asyncio.run, gather_async(base, plan))
            threads = list(pool.map(lambda r: (r[2], call(*r)), plan))
            by_tasks = list(zip([r[2] for r in plan], tasks.result(), strict=True))
        for headers, outcome in threads + by_tasks:
            check_bounded_failure(outcome, budget_of(headers))
        print(sorted({(o.path, o.status, o.error) for _, o in threads + by_tasks}))
        until_healthy(call, PATHS)


def test_header_budget_is_honored_when_shorter_and_capped_when_longer(frozen_pg: Any) -> None:
    """What the endpoint sees as remaining budget, in the thread pool and on the loop."""
    app = fastapi_app(frozen_pg.url, seconds=30.0, headers=HEADERS)
    cases = [
        ({}, 30.0),
        ({"x-request-timeout": "0.5"}, 0.5),
        ({"grpc-timeout": "250m"}, 0.25),
        ({"x-request-timeout": "100"}, 30.0),  # capped by the default
        ({"grpc-timeout": "1M"}, 30.0),
        ({"x-request-timeout": "soon"}, 30.0),  # malformed: the default
        ({"grpc-timeout": "2S", "x-request-timeout": "0.75"}, 0.75),  # the smaller
    ]
    with serve(app) as base, httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT) as client:
        for mode in MODES:
            for headers, budget in cases:
                body = client.get(f"/{mode}/budget", headers=headers).json()
                assert body["remaining"] is not None, (mode, headers)
                assert body["remaining"] <= budget, (mode, headers, body)
                # not the other budget: the next smaller one of the cases is at most 0.5 s
                assert body["remaining"] > (0.0 if budget < 1 else 1.0), (mode, headers, body)
            # a streamed body is produced inside the request's call: same deadline
            lines = client.get(f"/{mode}/stream", headers={"grpc-timeout": "700m"}).text.split()
            assert len(lines) == 2, lines
            assert all(line != "None" and float(line) <= 0.7 for line in lines), lines
        sync_thread = client.get("/sync/budget").json()["thread"]
        loop_thread = client.get("/async/budget").json()["thread"]
        assert sync_thread != loop_thread  # the def endpoint ran in the thread pool


def test_testclient_sync_and_async_endpoints_on_a_frozen_server(frozen_pg: Any) -> None:
    from starlette.testclient import TestClient

    app = fastapi_app(frozen_pg.url)
    with TestClient(app) as client:
        call = _caller(client)
        assert call("GET", "/sync/budget").body["remaining"] <= BUDGET
        for method, path in PATHS:
            assert call(method, path).status == 200, path
        with frozen_pg.frozen():
            outcomes = [call(method, path) for method, path in PATHS]
        for outcome in outcomes:
            check_bounded_failure(outcome)
        until_healthy(call, PATHS)
