"""WSGIDeadlineMiddleware on Flask against a frozen PostgreSQL (SIGSTOP), through Flask's test
client from concurrent threads: each request ends by its budget + grace with poolguard's error
mapped to 503/504, a streamed body is bounded by the same deadline, header budgets shorten the
default but never lengthen it, and the pool serves again after the thaw.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("flask", reason="needs the test extra (pip install -e .[test])")

import poolguard
from poolguard.errors import PoolguardError

from .conftest import (
    BUDGET,
    ENDPOINTS,
    ENGINE_OPTIONS,
    GRACE,
    HEADERS,
    Outcome,
    check_bounded_failure,
    flask_app,
    until_healthy,
    while_frozen,
)

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

PATHS = [(method, f"/sync/{name}") for method, name in ENDPOINTS]


@pytest.fixture
def engine(frozen_pg: Any) -> Any:
    engine = poolguard.create_engine(frozen_pg.url, **ENGINE_OPTIONS)
    yield engine
    engine.dispose()


def _caller(app: Any) -> Any:
    def call(method: str, path: str, headers: dict[str, str] | None = None) -> Outcome:
        client = app.test_client()  # one per call: threads share nothing but the app
        start = time.monotonic()
        response = client.open(path, method=method, headers=headers or {})
        body = response.get_json(silent=True)
        return Outcome(path, response.status_code, body, time.monotonic() - start)

    return call


def test_concurrent_requests_on_a_frozen_server_end_at_their_budget(
    frozen_pg: Any, engine: Any
) -> None:
    app = flask_app(engine, headers=HEADERS)
    call = _caller(app)
    no_headers: dict[str, str] = {}
    plan = [(m, p, no_headers) for m, p in PATHS] * 4
    plan.append(("GET", "/sync/read", {"grpc-timeout": "300m"}))
    for method, path in PATHS:
        assert call(method, path).status == 200, path
    outcomes = while_frozen(frozen_pg, call, plan)
    for (_, _, headers), outcome in zip(plan, outcomes, strict=True):
        check_bounded_failure(outcome, 0.3 if headers else BUDGET)
    print(sorted({(o.path, o.status, o.error) for o in outcomes}))
    print(f"{len(outcomes)} requests, slowest {max(o.elapsed for o in outcomes):.2f}s")
    until_healthy(call, PATHS)


def test_a_streamed_body_is_bounded_by_the_request_deadline(frozen_pg: Any, engine: Any) -> None:
    """The body generator runs after the view returned, still under the request's deadline."""
    app = flask_app(engine)
    client = app.test_client()
    assert client.get("/sync/stream").get_data(as_text=True).count("\n") == 3
    with frozen_pg.frozen():
        start = time.monotonic()
        # werkzeug's test client reads the first chunk itself; a server would send the
        # headers first: either way the chunk's query ends at the deadline, not at the thaw
        with pytest.raises(PoolguardError) as info:
            client.get("/sync/stream", buffered=False).get_data()
        elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError | poolguard.CircuitOpenError), info.value
    assert "deadline" in str(info.value)  # the request's, not a configured timeout
    assert elapsed <= BUDGET + GRACE
    until_healthy(_caller(app), [("GET", "/sync/stream")])


def test_header_budget_is_honored_when_shorter_and_capped_when_longer(engine: Any) -> None:
    app = flask_app(engine, seconds=30.0, headers=["x-request-timeout"])
    client = app.test_client()
    cases = [
        ({}, 30.0),
        ({"X-Request-Timeout": "0.5"}, 0.5),
        ({"X-Request-Timeout": "100"}, 30.0),  # capped by the default
        ({"X-Request-Timeout": "-1"}, 30.0),  # malformed: the default
        ({"grpc-timeout": "100m"}, 30.0),  # not trusted by this app
    ]
    for headers, budget in cases:
        left = client.get("/sync/budget", headers=headers).get_json()["remaining"]
        assert left is not None, headers
        assert left <= budget, (headers, left)
        assert left > (0.0 if budget < 1 else 1.0), (headers, left)
