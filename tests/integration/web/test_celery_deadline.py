"""job_deadline on a Celery task, run by a real Celery worker (celery.contrib.testing's
``start_worker``: a solo-pool worker thread on the in-memory broker and result backend) against
a frozen PostgreSQL: the task's database calls end by the job's budget + grace with poolguard's
error (mapped by status_for as in a request), and the task succeeds again after the thaw.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("celery", reason="needs the test extra (pip install -e .[test])")

from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import text

import poolguard
from poolguard.core.deadline import remaining
from poolguard.web import job_deadline, status_for

from .conftest import ENGINE_OPTIONS, GRACE

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

JOB_BUDGET = 1.5


@pytest.fixture
def count_items(frozen_pg: Any) -> Iterator[Any]:
    engine = poolguard.create_engine(frozen_pg.url, **ENGINE_OPTIONS)
    app = Celery("poolguard_jobs", broker="memory://", backend="cache+memory://")
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

    @app.task(name="count_items")
    @job_deadline(JOB_BUDGET)
    def count_items() -> dict[str, Any]:
        budget = remaining()
        try:
            with engine.connect() as conn:
                n = conn.scalar(text("SELECT count(*) FROM items"))
        except poolguard.PoolguardError as exc:
            # What a task would log / report; the error type is poolguard's, as in a request.
            return {"error": type(exc).__name__, "status": status_for(exc), "budget": budget}
        return {"n": n, "budget": budget}

    with start_worker(app, perform_ping_check=False, pool="solo", shutdown_timeout=30):
        yield count_items
    engine.dispose()


def test_a_task_on_a_frozen_server_ends_at_its_budget(frozen_pg: Any, count_items: Any) -> None:
    first = count_items.delay().get(timeout=60)
    assert first["n"] == 0
    assert 0 < first["budget"] <= JOB_BUDGET
    with frozen_pg.frozen():
        start = time.monotonic()
        outcome = count_items.delay().get(timeout=60)
        elapsed = time.monotonic() - start
    print(outcome, f"{elapsed:.2f}s")
    assert outcome["error"].split("_")[0] in {"QueryTimeout", "ConnectTimeout", "CircuitOpenError"}
    assert outcome["status"] in (503, 504)
    assert outcome["budget"] > 0
    assert elapsed <= JOB_BUDGET + GRACE
    stop = time.monotonic() + 60
    while "n" not in count_items.delay().get(timeout=60):  # healthy again after the thaw
        assert time.monotonic() < stop, "the task never succeeded after the thaw"
