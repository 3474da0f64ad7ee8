"""The example FastAPI app (examples/fastapi_app) without faults: what each endpoint promises.

Served by uvicorn on a loopback port, as in the chaos test, so ``def`` endpoints run in
FastAPI's thread pool and ``async def`` ones on the server's loop.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the example app needs the test extra (pip install .[test])")
pytest.importorskip("httpx", reason="the chaos driver needs httpx (test extra)")
pytest.importorskip("uvicorn", reason="the chaos driver needs uvicorn (test extra)")

import httpx
from fastapi_app import chaos
from fastapi_app.app import create_app, poolguard_stack

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def servers(dedicated_server: Any) -> tuple[Any, Any]:
    pg, rds = dedicated_server("postgres"), dedicated_server("redis")
    chaos.reset(pg.url, rds.url)
    return pg, rds


@pytest.mark.parametrize("mode", chaos.MODES)
def test_reads_cache_and_transfers(mode: str, servers: tuple[Any, Any]) -> None:
    pg, rds = servers
    app = create_app(lambda: poolguard_stack(pg.url, rds.url))
    tid = uuid.uuid4().hex
    transfer = {"id": tid, "src": 1, "dst": 2, "amount": 25}
    with chaos.serve(app) as base, httpx.Client(base_url=base) as client:
        assert client.get(f"/{mode}/accounts/1").json() == {"id": 1, "balance": 1000}
        assert client.get(f"/{mode}/accounts/999").status_code == 404
        first = client.get(f"/{mode}/cached/accounts/3").json()
        second = client.get(f"/{mode}/cached/accounts/3").json()
        assert (first["cached"], second["cached"]) == (False, True)
        assert first["balance"] == second["balance"] == 1000

        assert client.post(f"/{mode}/transfers", json=transfer).json() == {
            "id": tid,
            "outcome": "committed",
        }
        again = client.post(f"/{mode}/transfers", json=transfer)
        assert (again.status_code, again.json()["outcome"]) == (409, "duplicate")
        unknown = client.post(f"/{mode}/transfers", json={**transfer, "id": "x", "dst": 999})
        assert unknown.status_code == 404

        assert client.get(f"/{mode}/accounts/1").json()["balance"] == 975
        assert client.get(f"/{mode}/accounts/2").json()["balance"] == 1025
        assert client.get("/async/audit").json() == {"total": 10_000, "transfers": 1}


@pytest.mark.parametrize("mode", chaos.MODES)
def test_every_request_runs_under_the_deadline(mode: str, servers: tuple[Any, Any]) -> None:
    """A spent deadline fails the request, in the thread pool too (the ContextVar follows)."""
    pg, rds = servers
    app = create_app(lambda: poolguard_stack(pg.url, rds.url), deadline=0.0)
    with chaos.serve(app) as base, httpx.Client(base_url=base) as client:
        for path in (f"/{mode}/accounts/1", f"/{mode}/cached/accounts/1"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert "deadline" in response.json()["detail"]
