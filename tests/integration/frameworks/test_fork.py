"""``os.fork()`` with a guarded engine that has idle connections (what gunicorn --preload,
multiprocessing's fork start method and Celery's prefork pool do): the child must get its own
connections, and must leave the parent's sessions alive (closing them there would end them)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = pytest.mark.postgres

BACKEND_PID = text("SELECT pg_backend_pid()")
#: Only to fail instead of hanging, never a performance bound.
HANG_GUARD = 60


def _in_child(fn: Any) -> Any:
    """Run ``fn()`` in a forked child; return its JSON result (or raise its error)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 0
        try:
            try:
                out = {"ok": fn()}
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc}"}
                code = 1
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert data, (
        f"the child reported nothing (wait status {status}: killed, or hung until its alarm)"
    )
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"]


def test_child_gets_fresh_connections_and_leaves_the_parents(
    make_engine: Any, postgres_server: Any
) -> None:
    engine = make_engine(postgres_server.url)
    with engine.connect() as conn:
        parent = conn.execute(BACKEND_PID).scalar_one()

    def child() -> dict[str, Any]:
        idle = engine.pool.checkedin()
        with engine.connect() as conn:
            mine = conn.execute(BACKEND_PID).scalar_one()
        return {"idle_at_start": idle, "backend": mine}

    seen = _in_child(child)
    assert seen["idle_at_start"] == 0  # the parent's idle connection was forgotten
    assert seen["backend"] != parent
    # The child's exit (and garbage collection there) did not end the parent's session: the
    # parent's next checkout gets the same session, without a disconnect.
    with engine.connect() as conn:
        assert conn.execute(BACKEND_PID).scalar_one() == parent
    assert poolguard.stats(engine)["disconnects"] == 0


def test_async_engine_made_before_fork(postgres_server: Any) -> None:
    """An AsyncEngine used before the fork (its own event loop): the child's loop gets its own."""
    engine = poolguard.create_async_engine(postgres_server.url)

    async def backend() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(BACKEND_PID)).scalar_one())

    async def backend_and_close() -> int:
        try:
            return await backend()
        finally:
            await engine.dispose()

    # A pool warmed on one loop, then forked: the child runs its own loop.
    loop = asyncio.new_event_loop()
    try:
        parent = loop.run_until_complete(backend())
        child = _in_child(lambda: asyncio.run(backend()))
        assert child != parent
        assert loop.run_until_complete(backend()) == parent
    finally:
        loop.run_until_complete(backend_and_close())
        loop.close()


def test_native_pool_opened_before_fork_is_refused_in_the_child(postgres_server: Any) -> None:
    """psycopg_pool cannot be reset after a fork: a pool open at the fork refuses checkouts in
    the child (it handed out the parent's connection before) and says what to do; the parent
    keeps its session."""
    import psycopg_pool

    import poolguard.postgres

    with poolguard.postgres.create_pool(postgres_server.url, pool_size=1) as pool:
        pool.wait()
        parent = pool.fetchval("SELECT pg_backend_pid()")

        def child() -> str:
            with pytest.raises(psycopg_pool.PoolClosed) as refused:
                pool.fetchval("SELECT pg_backend_pid()")
            with pytest.raises(poolguard.PoolguardError), pool.connection():
                pass
            return str(refused.value)

        said = _in_child(child)
        assert "opened before fork()" in said
        assert "post_fork" in said
        assert pool.fetchval("SELECT pg_backend_pid()") == parent


def test_native_pool_opened_in_the_child_works(postgres_server: Any) -> None:
    """The recipe for forking servers: create with open=False, open in each worker."""
    import poolguard.postgres

    pool = poolguard.postgres.create_pool(postgres_server.url, pool_size=1, open=False)

    def child() -> int:
        pool.open(wait=True)
        try:
            return int(pool.fetchval("SELECT pg_backend_pid()"))
        finally:
            pool.close()

    first, second = _in_child(child), _in_child(child)
    assert first != second  # each worker its own session


def test_locks_held_by_another_thread_at_the_fork_do_not_hang_the_child(
    make_engine: Any, postgres_server: Any
) -> None:
    """A thread of the parent is inside the pool's queue and the Guard's locks when another
    thread forks: in the child those locks stay held forever (their owner does not exist
    there). The child's pool is a new one and the Guard's locks are new: a checkout works."""
    import signal
    import threading

    engine = make_engine(postgres_server.url)
    with engine.connect() as conn:
        conn.execute(BACKEND_PID)
    state = engine.pool._guard_state
    locks = [engine.pool._pool.mutex]
    locks += [
        part._lock
        for part in (state.guard.budget, state.guard.breaker, state.guard.stats)
        if hasattr(part, "_lock")
    ]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait()
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()

    def child() -> int:
        signal.alarm(HANG_GUARD)  # a deadlocked child dies (and the test fails) instead of hanging
        with engine.connect() as conn:
            return int(conn.execute(BACKEND_PID).scalar_one())

    try:
        assert _in_child(child) > 0
    finally:
        release.set()
        holder.join()


def test_keepalive_thread_runs_again_in_the_child(make_engine: Any, postgres_server: Any) -> None:
    """POOLGUARD_KEEPALIVE: the parent's watch is not the child's (it would ping the parent's
    sockets); the child's new pool is watched at its first connection, by a thread of its own."""
    from poolguard.core import keepalive

    engine = make_engine(postgres_server.url, keepalive=30)
    with engine.connect() as conn:
        conn.execute(BACKEND_PID)
    assert keepalive.watched() >= 1
    parent_threads = {t.ident for t in keepalive.running()}

    def child() -> dict[str, Any]:
        at_start = keepalive.watched()
        with engine.connect() as conn:
            conn.execute(BACKEND_PID)
        threads = keepalive.running()
        return {
            "at_start": at_start,
            "watched": keepalive.watched(),
            "threads": [t.ident for t in threads],
        }

    seen = _in_child(child)
    assert seen["at_start"] == 0
    assert seen["watched"] == 1
    assert len(seen["threads"]) == 1
    assert parent_threads  # the parent's thread runs on
