"""A real gunicorn with ``--preload`` and 2 workers serving examples/gunicorn_app.py.

The app makes its engine and Redis client at import, in the master, and uses both once there
(the connections stay idle in the pools); gunicorn then forks the workers. What must hold:

- no worker is ever served by the master's PostgreSQL session or Redis connection, and no two
  workers share one (two processes reading one socket would corrupt both);
- under concurrent requests (threads in each worker) and after every session of the app is
  killed server-side, reads keep succeeding (fresh connections, retries);
- the client backstop works in the workers: a statement the server never ends is cut at
  POOLGUARD_QUERY_TIMEOUT (+ grace) by the watchdog thread, which a fork does not copy.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

gunicorn_config = pytest.importorskip(
    "gunicorn.config", reason="needs the test extra (pip install .[test])"
)
httpx = pytest.importorskip("httpx", reason="needs the test extra (pip install .[test])")

from .conftest import EXAMPLES  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 2
THREADS = 4
#: Only to fail instead of hanging, never a performance bound.
HANG_GUARD = 60.0
_ids = itertools.count(1)


class Gunicorn:
    """``gunicorn --preload`` on a Unix socket, and an HTTP client for it."""

    def __init__(self, sock: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.sock = sock
        self.proc = proc
        self.log = log
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=sock),
            base_url="http://app",
            timeout=HANG_GUARD,
            # A new connection per request: each is accepted by whichever worker is free, so
            # both workers serve (a kept-alive connection stays with one worker).
            headers={"Connection": "close"},
        )

    def get(self, path: str) -> dict[str, Any]:
        response = self.client.get(path)
        assert response.status_code == 200, (response.status_code, response.text[-2000:])
        body: dict[str, Any] = response.json()
        return body

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def gunicorn(env: dict[str, str], threads: int = THREADS) -> Iterator[Gunicorn]:
    with tempfile.TemporaryDirectory(prefix="pg-gunicorn-") as tmp:
        sock = os.path.join(tmp, "app.sock")
        log = Path(tmp, "gunicorn.log")
        cmd = [
            sys.executable, "-m", "gunicorn", "--preload",
            "-w", str(WORKERS), "-k", "gthread", "--threads", str(threads),
            "-b", f"unix:{sock}", "--pythonpath", str(EXAMPLES),
            "--graceful-timeout", "5", "gunicorn_app:app",
        ]  # fmt: skip
        if hasattr(gunicorn_config, "ControlSocketDisable"):
            # gunicorn >= 25.1 opens a control socket in ~/.gunicorn, shared by every instance.
            cmd.insert(-1, "--no-control-socket")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        server = Gunicorn(sock, proc, log)
        try:
            _wait_ready(server)
            yield server
        finally:
            server.client.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(HANG_GUARD)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Gunicorn) -> None:
    stop = time.monotonic() + HANG_GUARD
    while True:
        assert server.proc.poll() is None, f"gunicorn exited:\n{server.output()}"
        assert time.monotonic() < stop, f"gunicorn never answered:\n{server.output()}"
        try:
            if server.client.get("/backend").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def _load(server: Gunicorn, requests: int) -> list[dict[str, Any]]:
    """``requests`` reads from 2 x WORKERS x THREADS client threads at once."""
    with ThreadPoolExecutor(2 * WORKERS * THREADS) as pool:
        return list(pool.map(lambda _i: server.get("/backend"), range(requests)))


class Env(dict[str, str]):
    """The app's environment; its repr (in failure reports) hides the URLs' passwords."""

    def __repr__(self) -> str:
        return f"<env {sorted(self)}>"


#: Marked like the server fixture it stands for, so that ``-m "not mysql"`` deselects it.
_KINDS = [pytest.param(kind, marks=getattr(pytest.mark, kind)) for kind in ("postgres", "mysql")]


@pytest.fixture(params=_KINDS)
def database(request: pytest.FixtureRequest) -> Any:
    """The SQL server the app uses (the backstop test: PostgreSQL only)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def app_env(database: Any, redis_server: Any) -> dict[str, str]:
    # PostgreSQL: the test's own application_name, so that the kill below only hits this app's
    # sessions (MariaDB has none: the kill hits every app session on this run's server).
    app_name = f"gunicorn_{os.getpid()}_{next(_ids)}"
    url = database.url
    if database.kind == "postgres":
        url = f"{url}?application_name={app_name}"
    return Env(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_server.url,
            "POOLGUARD_QUERY_TIMEOUT": "1s",
            "POOLGUARD_CONNECT_TIMEOUT": "2s",
            "POOLGUARD_RETRY_BACKOFF_INITIAL": "20ms",
            "POOLGUARD_POOL_SIZE": str(THREADS),
            "APP_NAME_FOR_TEST": app_name if database.kind == "postgres" else "",
        }
    )


def _sessions_by_worker(replies: list[dict[str, Any]], key: str) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = collections.defaultdict(set)
    for reply in replies:
        seen[reply["worker"]].add(reply[key])
    return seen


def _assert_own_sessions(replies: list[dict[str, Any]]) -> None:
    masters = {(r["master"], r["master_backend"], r["master_redis_client"]) for r in replies}
    assert len(masters) == 1, masters  # --preload: imported once, in the master
    (master, master_backend, master_redis), *_ = masters
    assert master not in {r["worker"] for r in replies}
    for key, master_session in (("backend", master_backend), ("redis_client", master_redis)):
        by_worker = _sessions_by_worker(replies, key)
        for worker, sessions in by_worker.items():
            assert master_session not in sessions, (key, worker, "served by the master's session")
        for (w1, s1), (w2, s2) in itertools.combinations(by_worker.items(), 2):
            assert not s1 & s2, (key, w1, w2, "share a session")


def test_preload_workers_get_their_own_connections(app_env: dict[str, str]) -> None:
    with gunicorn(app_env) as server:
        replies = _load(server, 400)
        assert len({r["worker"] for r in replies}) == WORKERS, server.output()
        _assert_own_sessions(replies)


def test_preload_workers_survive_session_kills(app_env: dict[str, str], database: Any) -> None:
    with gunicorn(app_env) as server:
        before = _load(server, 200)
        killed = database.kill_connections(application_name=app_env["APP_NAME_FOR_TEST"] or None)
        assert killed >= WORKERS  # every worker had open sessions
        after = _load(server, 200)  # every read answered (status 200): retried on fresh ones
        _assert_own_sessions(before + after)
        old = {r["backend"] for r in before}
        assert not old & {r["backend"] for r in after}  # the killed sessions are never reused


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_preload_workers_have_a_working_backstop(app_env: dict[str, str]) -> None:
    # One thread per worker: a worker busy with a stalled request accepts no other, so two at
    # once reach both workers.
    with gunicorn(app_env, threads=1) as server:
        # Every worker runs the stalled statement at least once (the master never ran one).
        outcomes: dict[int, set[str]] = collections.defaultdict(set)
        stop = time.monotonic() + HANG_GUARD
        while len(outcomes) < WORKERS:
            assert time.monotonic() < stop, dict(outcomes)
            with ThreadPoolExecutor(WORKERS) as pool:
                for reply in pool.map(lambda _i: server.get("/stall"), range(WORKERS)):
                    outcomes[reply["worker"]].add(reply["outcome"])
        assert all(seen == {"backstop"} for seen in outcomes.values()), dict(outcomes)
        # And the workers still serve reads afterwards.
        _assert_own_sessions(_load(server, 50))
