"""examples/flask_app.py runs: its endpoints work, and under a frozen server they answer 504/503."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask", reason="needs the test extra (pip install -e .[test])")

import poolguard
from poolguard.errors import ConfigError

from .conftest import ENGINE_OPTIONS, Outcome, check_bounded_failure

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

EXAMPLES = str(Path(__file__).resolve().parents[3] / "examples")


@pytest.fixture
def flask_example(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(EXAMPLES)
    sys.modules.pop("flask_app", None)
    import flask_app

    return flask_app


def test_the_example_serves_and_ends_frozen_requests_at_the_deadline(
    flask_example: Any, frozen_pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("POOLGUARD_REQUEST_DEADLINE", "1s")
    engine = poolguard.create_engine(frozen_pg.url, **ENGINE_OPTIONS)
    try:
        client = flask_example.create_app(engine).test_client()
        assert client.post("/notes", json={"body": "hello"}).status_code == 201
        assert client.get("/notes").get_json()["notes"][0]["body"] == "hello"
        assert client.get("/notes.txt").get_data(as_text=True) == "hello\n"
        with frozen_pg.frozen():
            start = time.monotonic()
            response = client.get("/notes", headers={"X-Request-Timeout": "0.5"})
            elapsed = time.monotonic() - start
        outcome = Outcome("/notes", response.status_code, response.get_json(), elapsed)
        check_bounded_failure(outcome, 0.5)  # within the header's 0.5 s + grace
    finally:
        engine.dispose()


def test_the_example_refuses_a_bad_budget_at_start_up(
    flask_example: Any, frozen_pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLGUARD_REQUEST_DEADLINE", "2 seconds")
    engine = poolguard.create_engine(frozen_pg.url, **ENGINE_OPTIONS)
    try:
        with pytest.raises(ConfigError, match="POOLGUARD_REQUEST_DEADLINE='2 seconds'"):
            flask_example.create_app(engine)
    finally:
        engine.dispose()
