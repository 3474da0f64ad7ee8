"""examples/observability_app.py run the way its docstring says: ``uvicorn`` in its own process.

Against the real PostgreSQL of the suite: the app's sessions are killed under concurrent reads,
writes and units of work (all answer 200: reads retried, units re-run), and the retries appear
as JSON log lines on stderr and as ``poolguard.retry`` events of the request spans printed by the
console span exporter; the metric export carries the ``db.client.connection.*`` pool metrics; a
client's ``X-Request-Timeout`` shorter than a slow statement gets a 504 naming QueryTimeout; no
password in anything the app printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the example needs the test extra")
pytest.importorskip("opentelemetry.sdk", reason="the example needs the test extra")

import httpx
from sqlalchemy.engine import make_url

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
pytestmark = pytest.mark.postgres
#: The command of the example's docstring.
UVICORN = (sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "observability_app:app")
UVICORN += ("--host", "127.0.0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class App:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, out: Path, err: Path) -> None:
        self.proc, self.base, self.out, self.err = proc, base, out, err

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def json_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


@pytest.fixture
def app(postgres_server: Any, tmp_path: Path) -> Iterator[App]:
    name = f"obs_example_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_server.url).update_query_dict({"application_name": name})
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "POOLGUARD_REQUEST_DEADLINE": "10s",
        # No checkout ping: a killed idle session is met by the statement, so the test sees
        # retries (with the ping on, the same kill is an eviction before the statement).
        "POOLGUARD_VALIDATE_IDLE": "off",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "PYTHONUNBUFFERED": "1",
    }
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [*UVICORN, "--port", str(port)],
            env=env,
            stdout=o,
            stderr=e,
        )
    served = App(proc, f"http://127.0.0.1:{port}", out, err)
    served.application_name = name  # type: ignore[attr-defined]
    try:
        for _ in range(600):  # a hang guard, not a time bound
            assert proc.poll() is None, served.stderr()
            try:
                if httpx.get(f"{served.base}/items/count", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"the app never answered: {served.stderr()}")
        yield served
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _until_sleeping(url: str, application_name: str) -> None:
    """Wait until the app's ``pg_sleep`` statement runs on the server."""
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(1000):  # a hang guard, not a time bound
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'active' AND query LIKE '%%pg_sleep%%'",
                (application_name,),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the app's pg_sleep never started")


def test_kills_are_retried_and_visible_in_logs_spans_and_metrics(
    app: App, postgres_server: Any
) -> None:
    name = app.application_name  # type: ignore[attr-defined]
    calls = [("GET", "/items/count"), ("POST", "/items")] * 6
    with httpx.Client(base_url=app.base, timeout=30) as client:

        def call(method_path: tuple[str, str]) -> int:
            response = client.request(*method_path)
            if response.status_code != 200:
                failures.append(f"{method_path} -> {response.status_code} {response.text[:300]}")
            return response.status_code

        failures: list[str] = []

        with ThreadPoolExecutor(6) as pool:  # warm the pool: several idle sessions to kill
            assert set(pool.map(call, calls)) == {200}
        # A statement killed while it runs: an idempotent read, retried (a kill of an idle
        # session may instead be found at checkout and replaced, with no retry to log). Before
        # the storm below: its retries draw on the retry budget, which may refuse this one.
        sleeping = ThreadPoolExecutor(1).submit(client.get, "/slow/1")
        _until_sleeping(postgres_server.url, name)
        assert postgres_server.kill_connections(application_name=name) >= 1
        killed = sleeping.result()
        assert killed.status_code == 200, (killed.text, app.stderr()[-4000:])

        stop = threading.Event()
        kills = [0]

        def killer() -> None:
            while not stop.is_set():
                kills[0] += postgres_server.kill_connections(application_name=name)
                stop.wait(0.2)

        k = threading.Thread(target=killer)
        k.start()
        try:
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(call, calls * 3))
        finally:
            stop.set()
            k.join()
        assert kills[0] > 0
        # Reads retried, units re-run, lost COMMITs resolved: no error.
        assert statuses == [200] * len(statuses), failures

        # A client's budget shorter than the statement: the library's timeout, mapped to 504.
        slow = client.get("/slow/5", headers={"X-Request-Timeout": "0.5"})
        assert slow.status_code == 504
        assert "QueryTimeout" in slow.text
        assert client.get("/items/count").status_code == 200  # the pool is fine afterwards

    retries = [line for line in app.json_lines() if line.get("event") == "retry"]
    assert retries, app.stderr()[-2000:]
    assert {line["pool"] for line in retries} == {"default"}
    assert all(line["backend"] and line["reason"] and line["attempt"] >= 1 for line in retries)

    for _ in range(200):  # the periodic reader exports every 0.3 s
        if "db.client.connection.count" in app.stdout():
            break
        time.sleep(0.05)
    printed = app.stdout()
    assert "db.client.connection.count" in printed
    assert "db.client.connection.wait_time" in printed
    assert '"name": "poolguard.retry"' in printed  # an event of a request span
    password = make_url(postgres_server.url).password
    if password:
        assert password not in printed
        assert password not in app.stderr()
