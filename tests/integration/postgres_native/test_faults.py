"""Real faults against the native pools: restarts, killed backends, a frozen server, a bad network.

Each test owns its server (``dedicated_server``) or fault proxy, so it may disturb it freely.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
import psycopg_pool
import pytest

import poolguard
from poolguard.testing import DeafListener, stream_during

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

#: "No call outlives its deadline by more than a small grace" (DESIGN "Testing").
GRACE = 0.5
DOWNTIME = 1.5


def test_restart_with_downtime_surfaces_no_error(dedicated_server: Any, make_pool: Any) -> None:
    server = dedicated_server("postgres")
    pool = make_pool(server.url)

    def read() -> None:
        with poolguard.deadline(10):
            assert pool.fetchval("SELECT 1") == 1

    result = stream_during(lambda: server.restart(downtime=DOWNTIME), read)
    assert result.errors == []
    assert result.spans_fault()
    snap = pool.stats()
    assert snap["give_ups"] == 0
    assert snap["disconnects"] >= 1
    assert snap["connect_failures"] >= 1  # the background reconnects met the downtime


async def test_async_restart_with_downtime_surfaces_no_error(
    dedicated_server: Any, make_async_pool: Any
) -> None:
    server = dedicated_server("postgres")
    pool = await make_async_pool(server.url)
    errors: list[Any] = []
    ok = 0

    def restart_soon() -> None:
        time.sleep(0.3)
        server.restart(downtime=DOWNTIME)

    restart = asyncio.get_running_loop().run_in_executor(None, restart_soon)
    while not restart.done():
        try:
            with poolguard.deadline(10):
                assert await pool.fetchval("SELECT 1") == 1
            ok += 1
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        await asyncio.sleep(0.01)
    await restart
    assert await pool.fetchval("SELECT 1") == 1
    assert errors == []
    assert ok > 10
    assert pool.stats()["give_ups"] == 0


def test_killed_idle_connections_are_replaced_without_errors(
    dedicated_server: Any, make_pool: Any, app_name: str
) -> None:
    server = dedicated_server("postgres")
    pool = make_pool(server.url, pool_size=3, max_overflow=0)
    for _ in range(3):
        pool.fetchval("SELECT 1")
    assert server.kill_connections(application_name=app_name) == 3
    results = [pool.fetchval("SELECT 1") for _ in range(10)]
    assert results == [1] * 10
    snap = pool.stats()
    assert snap["retries"] >= 1
    assert snap["disconnects"] >= 1
    # 57P01 marks every older connection suspect: they were validated, not used blindly.
    assert snap["validation_failures"] >= 1


def _use_all(pool: Any, n: int) -> None:
    """Hand out ``n`` connections at once and return them: each has been lent, so none is
    "fresh" (fresh connections are not pinged at checkout)."""
    conns = [pool.getconn() for _ in range(n)]
    for conn in conns:
        pool.putconn(conn)


def _assert_one_retry_then_pings(snap: dict[str, Any], idle: int) -> None:
    # The first attempt met a dead connection: its EOF ("consuming input failed", a
    # CONNECTION-scope error, no 57P01 after a SIGKILL) marked the older connections suspect,
    # so the retry pinged each other dead idle one (evicted) instead of running on it.
    assert snap["give_ups"] == 0
    assert snap["retries"] == 1
    assert snap["validation_failures"] == idle - 1
    assert snap["evictions"]["validation"] == idle - 1


def test_crash_with_idle_connections_costs_one_retry(dedicated_server: Any, make_pool: Any) -> None:
    """All backends die without a word (SIGKILL: the client reads a bare EOF): one read then
    succeeds on its first retry instead of spending its attempts on each dead idle one."""
    server = dedicated_server("postgres")
    pool = make_pool(server.url, pool_size=3, max_overflow=0)
    _use_all(pool, 3)
    server.restart(crash=True)
    with poolguard.deadline(20):
        assert pool.fetchval("SELECT 1") == 1
    _assert_one_retry_then_pings(pool.stats(), idle=3)


async def test_async_crash_with_idle_connections_costs_one_retry(
    dedicated_server: Any, make_async_pool: Any
) -> None:
    server = dedicated_server("postgres")
    pool = await make_async_pool(server.url, pool_size=3, max_overflow=0)
    conns = [await pool.getconn() for _ in range(3)]
    for conn in conns:
        await pool.putconn(conn)
    await asyncio.get_running_loop().run_in_executor(None, lambda: server.restart(crash=True))
    with poolguard.deadline(20):
        assert await pool.fetchval("SELECT 1") == 1
    _assert_one_retry_then_pings(pool.stats(), idle=3)


def _kill_soon(server: Any, app_name: str, delay: float = 0.4) -> threading.Thread:
    def kill() -> None:
        time.sleep(delay)
        server.kill_connections(application_name=app_name)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def test_killed_busy_read_is_retried(dedicated_server: Any, make_pool: Any, app_name: str) -> None:
    server = dedicated_server("postgres")
    pool = make_pool(server.url)
    killer = _kill_soon(server, app_name)
    started = time.monotonic()
    assert pool.fetchval("SELECT 7 FROM pg_sleep(1)") == 7
    killer.join()
    assert time.monotonic() - started >= 1.3  # it ran twice: killed once, then completed
    # pg_terminate_backend() reaches the sessions one by one: the retry may meet the next kill.
    assert set(pool.stats()["retries_by_reason"]) == {"admin_shutdown"}


def test_killed_busy_autocommit_write_is_ambiguous_not_retried(
    dedicated_server: Any, make_pool: Any, app_name: str
) -> None:
    server = dedicated_server("postgres")
    pool = make_pool(server.url)
    pool.execute("CREATE TABLE t (id int PRIMARY KEY)")
    killer = _kill_soon(server, app_name)
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        pool.execute("INSERT INTO t SELECT 1 FROM pg_sleep(1)")
    killer.join()
    assert isinstance(info.value, psycopg.OperationalError)
    assert pool.fetchval("SELECT count(*) FROM t") <= 1
    snap = pool.stats()
    assert snap["retries"] == 0
    assert snap["ambiguous"] == 1


def test_killed_busy_unit_of_work_is_rerun_once(dedicated_server: Any, make_pool: Any) -> None:
    server = dedicated_server("postgres")
    pool = make_pool(server.url)
    pool.execute("CREATE TABLE t (id int PRIMARY KEY)")
    calls = 0
    first_pid: list[int] = []

    def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute("INSERT INTO t VALUES (1)")
        if calls == 1:
            first_pid.append(conn.info.backend_pid)
        conn.execute("SELECT pg_sleep(1)")

    def kill_first() -> None:
        while not first_pid:
            time.sleep(0.01)
        time.sleep(0.3)
        server.psql(f"SELECT pg_terminate_backend({first_pid[0]}, 5000)")

    killer = threading.Thread(target=kill_first)
    killer.start()
    pool.transaction(unit)
    killer.join()
    assert calls == 2  # killed mid-unit (nothing committed), re-run once on a fresh connection
    assert pool.fetchval("SELECT count(*) FROM t") == 1
    assert pool.stats()["retries_by_reason"] == {"admin_shutdown": 1}


def test_frozen_server_is_bounded_by_the_deadline_then_recovers(
    dedicated_server: Any, make_pool: Any
) -> None:
    server = dedicated_server("postgres")
    # validate_idle off: the idle connection is handed out unpinged, so the query meets the freeze
    pool = make_pool(server.url, query_timeout=0.5, validate_idle=None)
    assert pool.fetchval("SELECT 1") == 1
    with server.frozen():
        started = time.monotonic()
        with poolguard.deadline(1.0), pytest.raises(psycopg.OperationalError) as info:
            pool.fetchval("SELECT 1")
        elapsed = time.monotonic() - started
        assert isinstance(info.value, poolguard.QueryTimeout | poolguard.PoolTimeout)
        assert elapsed <= 1.0 + GRACE
        # No deadline: the query timeout's backstop (0.5 s + 0.5 s grace) still bounds it,
        # where statement_timeout cannot fire on a stopped server.
        started = time.monotonic()
        with pool.connection() as conn, pytest.raises(poolguard.QueryTimeout):
            conn.execute("SELECT 1")
        assert time.monotonic() - started <= 1.0 + GRACE
    with poolguard.deadline(5):
        assert pool.fetchval("SELECT 1") == 1


async def test_async_frozen_server_is_bounded_by_the_deadline(
    dedicated_server: Any, make_async_pool: Any
) -> None:
    server = dedicated_server("postgres")
    pool = await make_async_pool(server.url)
    assert await pool.fetchval("SELECT 1") == 1
    server.freeze()
    try:
        started = time.monotonic()
        with poolguard.deadline(1.0), pytest.raises(psycopg.OperationalError):
            await pool.fetchval("SELECT 1")
        assert time.monotonic() - started <= 1.0 + GRACE
    finally:
        server.thaw()
    with poolguard.deadline(5):
        assert await pool.fetchval("SELECT 1") == 1


def test_blackholed_network_is_cut_by_the_backstop(
    postgres_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    pool = make_pool(proxy.url(postgres_server.url), query_timeout=0.3)
    assert pool.fetchval("SELECT 1") == 1
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(poolguard.QueryTimeout):
        pool.fetchval("SELECT 1")
    assert time.monotonic() - started <= 0.3 + 0.5 + GRACE
    proxy.clear()
    with poolguard.deadline(5):
        assert pool.fetchval("SELECT 1") == 1
    assert pool.stats()["evictions"]["timeout"] == 1


def test_reset_connections_are_retried_until_the_network_heals(
    postgres_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    pool = make_pool(proxy.url(postgres_server.url))
    assert pool.fetchval("SELECT 1") == 1
    proxy.reset()  # RST every link, and every new connection until clear()
    healer = threading.Timer(0.5, proxy.clear)
    healer.start()
    try:
        with poolguard.deadline(5):
            assert pool.fetchval("SELECT 1") == 1
    finally:
        healer.join()
    snap = pool.stats()
    assert snap["connect_failures"] >= 1
    assert snap["give_ups"] == 0


def test_lost_commit_reply_is_ambiguous_and_never_reapplied(
    postgres_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    pool = make_pool(proxy.url(postgres_server.url), query_timeout=0.3)
    table = f"t_{uuid.uuid4().hex[:10]}"
    pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    calls = 0

    def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        proxy.blackhole("downstream")  # the COMMIT goes out, its reply never comes back

    started = time.monotonic()
    with pytest.raises(poolguard.AmbiguousResultError) as info:
        pool.transaction(unit)
    assert time.monotonic() - started <= 0.3 + 0.5 + GRACE
    assert isinstance(info.value, psycopg.OperationalError)
    assert calls == 1
    proxy.clear()
    with psycopg.connect(postgres_server.url) as direct:
        count = direct.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert count == (1,)  # applied once, by the lost COMMIT; never re-run
    assert pool.stats()["ambiguous"] == 1


def test_sub_second_connect_timeout_against_a_deaf_server(make_pool: Any) -> None:
    with DeafListener() as deaf:
        pool = make_pool(
            deaf.url("postgresql://app:pw@127.0.0.1:1/app"),
            wait=False,
            connect_timeout=0.3,
            acquire_timeout=1.2,
        )
        started = time.monotonic()
        with pytest.raises(poolguard.PoolTimeout) as info:
            pool.fetchval("SELECT 1")
        assert time.monotonic() - started <= 1.2 + GRACE
        assert "cannot connect" in str(info.value)
        # libpq alone would need 2 s for its first timeout (whole seconds, minimum 2)
        assert pool.stats()["connect_failures"] >= 2


def test_breaker_opens_on_a_dead_server_and_closes_when_it_returns(
    postgres_server: Any, fault_proxy: Any, make_pool: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    proxy.down()  # dead from the start: every background connect is refused
    pool = make_pool(
        proxy.url(postgres_server.url),
        wait=False,
        acquire_timeout=0.3,
        breaker_failures=2,
        breaker_reset=30,
    )
    for _ in range(2):
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.fetchval("SELECT 1")
    # Open now: a caller whose window cannot wait for the next probe fails fast, without
    # queueing on the dead server (one that can wait would become the probe).
    started = time.monotonic()
    with poolguard.deadline(0.1), pytest.raises(poolguard.CircuitOpenError) as info:
        pool.fetchval("SELECT 1")
    assert time.monotonic() - started < 0.1
    assert isinstance(info.value, psycopg.OperationalError)
    proxy.up()
    deadline = time.monotonic() + 5
    while pool.stats()["breaker"]["state"] != "closed" and time.monotonic() < deadline:
        time.sleep(0.05)  # a background reconnect that succeeds closes the breaker
    assert pool.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("fate", ["committed", "aborted"])
def test_lost_commit_is_resolved_on_the_server_when_asked(
    postgres_server: Any, fault_proxy: Any, make_pool: Any, fate: str
) -> None:
    """committed: the COMMIT applied, its reply lost -> resolved, returned, not re-run.
    aborted: the backend died before the COMMIT reached it -> resolved, unit re-run once."""
    proxy = fault_proxy(postgres_server)
    pool = make_pool(proxy.url(postgres_server.url), query_timeout=0.3)
    table = f"t_{uuid.uuid4().hex[:10]}"
    pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    calls = 0

    def unit(conn: Any) -> str:
        nonlocal calls
        calls += 1
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        if calls == 1:
            pid = conn.info.backend_pid
            if fate == "committed":
                proxy.blackhole("downstream")  # the COMMIT goes out, its reply never returns
            else:
                proxy.blackhole("upstream")  # the COMMIT is held back...
                kill = f"SELECT pg_terminate_backend({pid}, 5000)"  # ...and its session ends
                threading.Timer(0.3, postgres_server.psql, args=(kill,)).start()
            threading.Timer(1.2, proxy.clear).start()  # the network heals after the cut
        return "done"

    with poolguard.deadline(10):
        assert pool.transaction(unit, resolve_ambiguous=True) == "done"
    with psycopg.connect(postgres_server.url) as direct:
        count = direct.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert count == (1,)
    assert calls == (1 if fate == "committed" else 2)
    resolved = pool.stats()["ambiguous_resolved"]
    assert resolved == {"committed": 0, "aborted": 0, fate: 1}
