"""Background keepalive of idle connections (``POOLGUARD_KEEPALIVE``), against real servers.

- MariaDB with ``wait_timeout=2``: with a keepalive shorter than it the idle sessions are kept
  (same CONNECTION_ID() after the lull); without keepalive (and without the checkout layers that
  would hide it) the request meets the killed connection; with a keepalive longer than it the dead
  ones are found and replaced in the background, before any request.
- A NAT-like idle cut (FaultProxy.idle_cut: the path silently forgets an idle link): the
  keepalive keeps links busy enough not to be cut, or finds the cut ones (ping bounded by the
  validation timeout) and replaces them.
- A connection checked out in a transaction is never pinged (pg_stat_activity's last query).
- One thread for many pools; it ends once every pool is disposed; callers concurrent with
  sweeps never fail and never wait for a ping; asyncio engines are swept on their loop.

No wall-clock bounds: each wait is for a condition (with a generous bound that only turns a
hang into a failure). A count of pings stands for elapsed time: a connection is pinged at most
once per interval, so ``k`` pings of one connection span at least ``(k - 1) * interval``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard
from poolguard.core import keepalive

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

WAIT_TIMEOUT = 2
POOL = 3
#: Only to fail instead of hanging, never a performance bound.
HANG_GUARD = 30.0
#: Checkout layers off, so that only keepalive stands between a request and a dead connection.
BARE: dict[str, Any] = {"validate_idle": None, "max_idle": None, "retry_attempts": 1}


def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    stop = time.monotonic() + HANG_GUARD
    while not predicate():
        assert time.monotonic() < stop, f"{what} never became true"
        time.sleep(0.02)


def stat(engine: Any, key: str) -> Any:
    return poolguard.stats(engine)[key]


@pytest.fixture(scope="module")
def idle_killer() -> Iterator[Any]:
    """One MariaDB with wait_timeout=2 for the whole module (a start costs ~1 s)."""
    from poolguard.testing import MySQLServer

    with MySQLServer(config={"wait_timeout": str(WAIT_TIMEOUT)}) as server:
        yield server


def _fill(engine: Any, sql: str) -> list[Any]:
    """Open POOL connections at once, run ``sql`` on each, return them; its results."""
    conns = [engine.connect() for _ in range(POOL)]
    try:
        return [conn.execute(text(sql)).scalar() for conn in conns]
    finally:
        for conn in conns:
            conn.close()


def _concurrent(engine: Any, sql: str, n: int = POOL) -> tuple[list[Any], list[str]]:
    """``n`` threads each run ``sql`` once at the same time: (results, errors)."""
    results: list[Any] = []
    errors: list[str] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        try:
            with engine.connect() as conn:
                results.append(conn.execute(text(sql)).scalar())
                barrier_hold.wait()  # all n hold a connection at once: each its own
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier_hold.abort()

    barrier_hold = threading.Barrier(n)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD)
    return results, errors


# --- MariaDB wait_timeout -----------------------------------------------------------------------


@pytest.mark.mysql
@pytest.mark.parametrize("keep", [None, 0.4], ids=["no-keepalive", "keepalive-0.4s"])
def test_mariadb_wait_timeout_kept_alive(make_engine: Any, idle_killer: Any, keep: Any) -> None:
    engine = make_engine(idle_killer.url, pool_size=POOL, keepalive=keep, **BARE)
    before = set(_fill(engine, "SELECT CONNECTION_ID()"))
    if keep is None:
        # The server kills them all: its own counter says so, no clock needed.
        until(lambda: _aborted(idle_killer) >= POOL, "wait_timeout kills")
    else:
        # 8 pings of each connection span >= 7 x 0.4 s = 2.8 s > wait_timeout.
        until(lambda: stat(engine, "keepalive_pings") >= 8 * POOL, "8 keepalive rounds")
    results, errors = _concurrent(engine, "SELECT CONNECTION_ID()")
    if keep is None:
        assert errors, "the request did not meet the killed connection (anchor changed?)"
        assert any("2006" in e or "2013" in e or "gone away" in e for e in errors), errors
        return
    assert errors == []
    assert set(results) == before  # the same server sessions: kept alive, not replaced
    snap = poolguard.stats(engine)
    assert snap["evictions"]["keepalive"] == 0
    assert snap["keepalive_failures"] == 0
    assert snap["connects"] == POOL


def _aborted(server: Any) -> int:
    """Sessions MariaDB closed for wait_timeout since it started (Aborted_clients)."""
    out = server.sql("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
    return int(out.split()[-1])


@pytest.mark.mysql
def test_mariadb_wait_timeout_dead_found_and_replaced(make_engine: Any, idle_killer: Any) -> None:
    # Keepalive longer than wait_timeout: the server kills first, the keepalive finds each dead
    # connection before any request does and reconnects it in place.
    engine = make_engine(idle_killer.url, pool_size=POOL, keepalive=WAIT_TIMEOUT + 1.0, **BARE)
    before = set(_fill(engine, "SELECT CONNECTION_ID()"))
    until(lambda: stat(engine, "evictions")["keepalive"] >= POOL, "keepalive evictions")
    until(lambda: stat(engine, "connects") >= 2 * POOL, "replacements")
    snap = poolguard.stats(engine)
    assert snap["keepalive_failures"] >= POOL
    assert snap["idle"] == POOL  # refilled: the pool kept the idle connections it had
    results, errors = _concurrent(engine, "SELECT CONNECTION_ID()")
    assert errors == []
    assert not set(results) & before  # each request met a replacement, never a dead one


# --- NAT / firewall idle cut (FaultProxy) --------------------------------------------------------


@pytest.mark.postgres
def test_idle_cut_links_kept_busy(make_engine: Any, postgres_server: Any, fault_proxy: Any) -> None:
    proxy = fault_proxy(postgres_server)
    proxy.idle_cut(1.0)
    engine = make_engine(proxy.url(postgres_server.url), pool_size=POOL, keepalive=0.25, **BARE)
    _fill(engine, "SELECT 1")
    # 7 pings of each connection span >= 1.5 s > the 1 s cut.
    until(lambda: stat(engine, "keepalive_pings") >= 7 * POOL, "7 keepalive rounds")
    results, errors = _concurrent(engine, "SELECT 1")
    assert (results, errors) == ([1] * POOL, [])
    assert proxy.idle_cuts == 0
    assert stat(engine, "connects") == POOL


@pytest.mark.postgres
@pytest.mark.parametrize("rst", [False, True], ids=["silent-drop", "reset"])
def test_idle_cut_links_evicted_and_refilled(
    make_engine: Any, postgres_server: Any, fault_proxy: Any, rst: bool
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_engine(proxy.url(postgres_server.url), pool_size=POOL, keepalive=1.0, **BARE)
    _fill(engine, "SELECT 1")
    proxy.idle_cut(0.3, rst=rst)
    until(lambda: stat(engine, "evictions")["keepalive"] >= POOL, "keepalive evictions")
    proxy.clear()  # no more cuts from now on
    assert proxy.idle_cuts >= POOL
    until(lambda: stat(engine, "connects") >= 2 * POOL, "replacements")
    # A replacement opened before clear() may have been cut too: the next sweeps find it. Two
    # successful pings per connection after clear() (a silently dropped ping ends at the
    # validation timeout, the backstop: it never hangs a sweep).
    ok0 = _ok_pings(engine)
    until(lambda: _ok_pings(engine) >= ok0 + 2 * POOL, "two clean rounds")
    until(lambda: stat(engine, "idle") == POOL, "the pool back to its idle connections")
    results, errors = _concurrent(engine, "SELECT 1")
    assert (results, errors) == ([1] * POOL, [])


def _ok_pings(engine: Any) -> int:
    return int(stat(engine, "keepalive_pings") - stat(engine, "keepalive_failures"))


# --- never a checked-out connection --------------------------------------------------------------


@pytest.mark.postgres
def test_checked_out_connection_is_never_pinged(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, pool_size=2, keepalive=0.1, **BARE)
    _fill(engine, "SELECT 1")  # two idle connections
    marker = "SELECT pg_backend_pid() /* held in a transaction */"
    with engine.connect() as held:
        held.begin()
        pid = held.execute(text(marker)).scalar()
        pings = stat(engine, "keepalive_pings")
        # 10 more pings: with one connection idle, >= 0.9 s of sweeps while this one is held.
        until(lambda: stat(engine, "keepalive_pings") >= pings + 10, "10 more pings")
        with psycopg.connect(postgres_server.url.replace("+psycopg", "")) as admin:
            query, state = admin.execute(
                "SELECT query, state FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()  # type: ignore[misc]
        assert (query, state) == (marker, "idle in transaction")
        assert held.execute(text("SELECT 1")).scalar() == 1
    assert stat(engine, "keepalive_failures") == 0


# --- one thread, stops, concurrency, asyncio -----------------------------------------------------


@pytest.mark.postgres
def test_one_thread_for_many_pools_ends_after_dispose(
    make_engine: Any, postgres_server: Any
) -> None:
    engines = [make_engine(postgres_server.url, pool_size=1, keepalive=0.1) for _ in range(4)]
    for engine in engines:
        _fill_one(engine)
    until(lambda: all(stat(e, "keepalive_pings") >= 2 for e in engines), "every pool pinged")
    assert len(keepalive.running()) == 1
    for engine in engines:
        engine.dispose()
    until(lambda: keepalive.watched() == 0, "every pool unwatched")
    until(lambda: keepalive.running() == [], "the keepalive thread gone")
    pings = [stat(e, "keepalive_pings") for e in engines]
    # Nothing left to ping: counted pings stay put while a fresh watched pool is swept.
    probe = make_engine(postgres_server.url, pool_size=1, keepalive=0.1)
    _fill_one(probe)
    until(lambda: stat(probe, "keepalive_pings") >= 3, "the probe pool pinged")
    assert [stat(e, "keepalive_pings") for e in engines] == pings


def _fill_one(engine: Any) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@pytest.mark.postgres
def test_concurrent_callers_while_sweeping(make_engine: Any, postgres_server: Any) -> None:
    # Keepalive at 10 ms on a 4-connection pool used by 8 threads in bursts: a caller arriving
    # while a connection is lent to a ping gets another one or opens one; none fails.
    engine = make_engine(
        postgres_server.url, pool_size=4, max_overflow=0, keepalive=0.01, acquire_timeout=10.0
    )
    errors: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT 1")).scalar() == 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.03)  # let connections sit idle long enough to be swept

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        until(lambda: stat(engine, "keepalive_pings") >= 30 or bool(errors), "30 pings")
    finally:
        stop.set()
        for t in threads:
            t.join(HANG_GUARD)
    assert errors == []
    snap = poolguard.stats(engine)
    assert snap["keepalive_failures"] == 0
    assert snap["size"] <= 4
    assert snap["checked_out"] == 0


@pytest.mark.postgres
async def test_asyncio_engine_swept_on_its_loop(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(postgres_server.url, pool_size=2, keepalive=0.1, **BARE)
    async with engine.connect() as a, engine.connect() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
    stop = time.monotonic() + HANG_GUARD
    while poolguard.stats(engine)["keepalive_pings"] < 6:
        assert time.monotonic() < stop, "the asyncio pool was never pinged"
        await asyncio.sleep(0.02)  # the loop must run: the sweep is a task on it
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    assert poolguard.stats(engine)["keepalive_failures"] == 0
    await engine.dispose()
    assert all(e.loop is None or e.ref() is not engine.sync_engine.pool for e in _entries())


def _entries() -> list[Any]:
    with keepalive._keeper.cond:
        return list(keepalive._keeper.entries.values())


@pytest.mark.postgres
def test_off_by_default(make_engine: Any, postgres_server: Any) -> None:
    watched = keepalive.watched()
    engine = make_engine(postgres_server.url, pool_size=1)
    _fill_one(engine)
    assert keepalive.watched() == watched
    assert isinstance(engine.pool, sqlalchemy.pool.QueuePool)
    assert stat(engine, "keepalive_pings") == 0


@pytest.mark.postgres
def test_interpreter_exit_with_keepalive_running(postgres_server: Any) -> None:
    # A process that never disposes its engine exits cleanly while the thread is mid-interval.
    import subprocess
    import sys

    script = (
        "import sys, poolguard\n"
        "from poolguard.core import keepalive\n"
        "from sqlalchemy import text\n"
        "e = poolguard.create_engine(sys.argv[1], keepalive=0.05)\n"
        "with e.connect() as c: c.execute(text('SELECT 1'))\n"
        "import time\n"
        "while poolguard.stats(e)['keepalive_pings'] < 3: time.sleep(0.01)\n"
        "assert len(keepalive.running()) == 1\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, postgres_server.url],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    assert "Traceback" not in done.stderr
