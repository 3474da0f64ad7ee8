"""The middlewares and job_deadline without a framework: what deadline the app code sees."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from poolguard.core.deadline import current_deadline, remaining
from poolguard.errors import (
    AmbiguousResultError,
    CircuitOpenError,
    ConfigError,
    ConnectTimeout,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin,
)
from poolguard.web import (
    ASGIDeadlineMiddleware,
    WSGIDeadlineMiddleware,
    error_body,
    flask_error_handler,
    job_deadline,
    status_for,
)


def asgi_call(
    app: Any, scope_type: str = "http", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    asyncio.run(app({"type": scope_type, "headers": headers or []}, receive, send))


def test_asgi_runs_the_request_under_its_budget() -> None:
    seen: list[float | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(remaining())
        seen.append(await asyncio.to_thread(remaining))  # a worker thread sees it too

    middleware = ASGIDeadlineMiddleware(app, seconds=5.0, headers=["grpc-timeout"])
    asgi_call(middleware)
    asgi_call(middleware, headers=[(b"grpc-timeout", b"300m")])
    asgi_call(middleware, headers=[(b"grpc-timeout", b"1H")])
    asgi_call(middleware, headers=[(b"grpc-timeout", b"bogus")])
    budgets = [value for value in seen if value is not None]
    assert len(budgets) == 8
    assert all(0.3 < b <= 5.0 for b in budgets[0:2]), budgets
    assert all(0.0 < b <= 0.3 for b in budgets[2:4]), budgets
    assert all(0.3 < b <= 5.0 for b in budgets[4:8]), budgets
    assert current_deadline() is None


def test_asgi_leaves_websocket_and_lifespan_unbounded() -> None:
    seen: list[float | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_deadline())

    middleware = ASGIDeadlineMiddleware(app, seconds=1.0)
    asgi_call(middleware, "websocket")
    asgi_call(middleware, "lifespan")
    assert seen == [None, None]


def test_middlewares_fail_at_construction_on_a_bad_variable() -> None:
    for middleware in (ASGIDeadlineMiddleware, WSGIDeadlineMiddleware):
        with pytest.raises(ConfigError, match="POOLGUARD_REQUEST_DEADLINE"):
            middleware(lambda *a: None, environ={"POOLGUARD_REQUEST_DEADLINE": "five"})  # type: ignore[arg-type]


def test_wsgi_bounds_the_app_call_and_the_streamed_body() -> None:
    seen: list[float | None] = []
    closed: list[float | None] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(2):
                seen.append(remaining())  # runs when the server iterates, after the call
                yield b"x"

        def close(self) -> None:
            closed.append(remaining())

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(remaining())
        start_response("200 OK", [])
        return Body()

    middleware = WSGIDeadlineMiddleware(app, seconds=5.0, headers=["x-request-timeout"])
    body = middleware({"HTTP_X_REQUEST_TIMEOUT": "0.5"}, lambda *a: lambda data: None)
    assert current_deadline() is None  # nothing leaks to the server's thread between steps
    assert b"".join(body) == b"xx"
    body.close()  # type: ignore[attr-defined]
    assert len(seen) == 3, seen
    assert all(s is not None and s <= 0.5 for s in seen), seen
    assert closed
    assert closed[0] is not None
    assert closed[0] <= 0.5
    assert current_deadline() is None


def test_wsgi_hands_a_file_wrapper_back_unwrapped() -> None:
    class FileWrapper:
        def __init__(self, data: bytes) -> None:
            self.data = data

    sent: Any = FileWrapper(b"file")
    middleware = WSGIDeadlineMiddleware(lambda environ, start: sent, seconds=1.0)
    assert middleware({"wsgi.file_wrapper": FileWrapper}, lambda *a: lambda data: None) is sent


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueryTimeout("q"), 504),
        (TransactionTimeout("t"), 504),
        (ConnectTimeout("c"), 504),
        (PoolTimeout("p"), 503),
        (CircuitOpenError("o"), 503),
        (AmbiguousResultError("a"), 503),
        (ConfigError("bad"), None),
        (TimeoutError("not ours"), None),
        (ValueError("not ours"), None),
    ],
)
def test_status_for(error: BaseException, status: int | None) -> None:
    assert status_for(error) == status


def test_pool_and_breaker_errors_are_504_once_the_budget_is_spent() -> None:
    from poolguard.core.deadline import deadline

    for error in (PoolTimeout("p"), CircuitOpenError("o")):
        assert status_for(error, spent=True) == 504
        assert status_for(error, spent=False) == 503
        with deadline(0):  # read from the request's deadline by default
            assert status_for(error) == 504
        with deadline(60):
            assert status_for(error) == 503
    with deadline(0):
        assert status_for(AmbiguousResultError("a")) == 503  # not a matter of time


def test_dropin_variants_map_and_name_as_poolguard_classes() -> None:
    error = dropin(QueryTimeout, TimeoutError, "deadline exceeded before the query could start\nx")
    assert status_for(error) == 504
    assert error_body(error) == {
        "error": "QueryTimeout",
        "detail": "deadline exceeded before the query could start",
    }
    assert flask_error_handler(error) == (error_body(error), 504)


def test_job_deadline_decorates_sync_and_async_and_is_a_root() -> None:
    @job_deadline(30)
    def sync_job(x: int) -> tuple[int, float | None]:
        return x, remaining()

    @job_deadline(30)
    async def async_job(x: int) -> tuple[int, float | None]:
        return x, remaining()

    from poolguard.core.deadline import deadline

    with deadline(0.5):  # the scheduler's (nearly spent) budget does not cut the job's
        x, left = sync_job(1)
        assert x == 1
        assert left is not None
        assert 10 < left <= 30
        y, aleft = asyncio.run(async_job(2))
        assert y == 2
        assert aleft is not None
        assert 10 < aleft <= 30
        with job_deadline(10) as bound:
            assert bound.at == current_deadline()
            assert (remaining() or 0) > 5
        assert (remaining() or 99) <= 0.5
    assert sync_job.__name__ == "sync_job"
    assert asyncio.iscoroutinefunction(async_job)


def test_one_job_deadline_shared_by_threads_and_nested() -> None:
    import threading

    shared = job_deadline(20)
    ready = threading.Barrier(4)
    seen: list[float | None] = []

    def worker() -> None:
        with shared:
            ready.wait(10)  # all four inside the same object at once
            with shared:
                seen.append(remaining())
            seen.append(remaining())
        seen.append(current_deadline())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 12
    assert seen.count(None) == 4  # each thread left exactly what it entered
    assert all(s is None or 5 < s <= 20 for s in seen)


def test_job_deadline_refuses_generator_functions() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        job_deadline(1)(numbers)


def test_job_deadline_as_async_context_manager() -> None:
    async def main() -> float | None:
        async with job_deadline(2):
            return remaining()

    left = asyncio.run(main())
    assert left is not None
    assert 1 < left <= 2


def test_importing_poolguard_web_imports_no_framework() -> None:
    code = (
        "import sys, poolguard.web; "
        "print(sorted(m for m in ('starlette', 'fastapi', 'flask', 'werkzeug', 'celery') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
