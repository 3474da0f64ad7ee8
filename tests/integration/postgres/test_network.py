"""Network faults through the fault proxy: blackhole, latency, reset, refuse, deaf listener."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard
from poolguard.testing.proxy import DeafListener

from .conftest import both_async_drivers

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

GRACE = 0.5


def _proxied(make_engine: Any, fault_proxy: Any, server: Any, **overrides: Any) -> Any:
    proxy = fault_proxy(server)
    return proxy, make_engine(proxy.url(server.url), **overrides)


def test_blackhole_mid_session_bounded_by_deadline(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(make_engine, fault_proxy, postgres_server)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.8):
            conn.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
    proxy.clear()
    assert elapsed < 0.8 + GRACE, elapsed
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 2")).scalar() == 2


def test_blackhole_on_connect_is_a_connect_timeout(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(
        make_engine,
        fault_proxy,
        postgres_server,
        connect_timeout=0.4,
        retry_attempts=2,
        # Connect failures are retried until the retry window ends (not counted against
        # retry_attempts): a 0.6 s window leaves room for exactly one reconnect.
        retry_timeout=0.6,
    )
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(poolguard.ConnectTimeout) as info:
        engine.connect()
    elapsed = time.monotonic() - started
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert info.value.attempts == 2
    assert elapsed < 2 * 0.4 + 0.2 + GRACE, elapsed  # two attempts plus one backoff


def test_latency_is_tolerated(make_engine: Any, fault_proxy: Any, postgres_server: Any) -> None:
    proxy, engine = _proxied(make_engine, fault_proxy, postgres_server, query_timeout=2)
    proxy.latency(0.1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 5")).scalar() == 5
    assert poolguard.stats(engine)["retries"] == 0


def test_latency_beyond_deadline_times_out(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(make_engine, fault_proxy, postgres_server)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        proxy.latency(1.0)
        started = time.monotonic()
        with pytest.raises(poolguard.QueryTimeout), poolguard.deadline(0.5):
            conn.execute(text("SELECT 1"))
        assert time.monotonic() - started < 0.5 + GRACE


def test_reset_connections_are_replaced(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(make_engine, fault_proxy, postgres_server, pool_size=2)
    for _ in range(2):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    proxy.reset()  # RST every existing link
    proxy.clear()
    for i in range(4):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
    assert poolguard.stats(engine)["give_ups"] == 0


def test_refused_then_back_is_retried_at_checkout(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(
        make_engine, fault_proxy, postgres_server, retry_attempts=20, retry_timeout=5
    )
    proxy.down()
    timer = threading.Timer(0.5, proxy.up)
    timer.start()
    with poolguard.deadline(5), engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    timer.join()
    snap = poolguard.stats(engine)
    assert snap["retries"] >= 1
    assert set(snap["retries_by_reason"]) <= {"connect_failed", "connect_refused"}


def test_refused_gives_up_within_the_deadline(
    make_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy, engine = _proxied(make_engine, fault_proxy, postgres_server, retry_attempts=100)
    proxy.down()
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError), poolguard.deadline(0.6):
        engine.connect()
    assert time.monotonic() - started < 0.6 + GRACE


def test_deaf_listener_sub_second_connect_timeout(make_engine: Any, postgres_server: Any) -> None:
    with DeafListener() as deaf:
        engine = make_engine(deaf.url(postgres_server.url), connect_timeout=0.3, retry_attempts=1)
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout) as info:
            engine.connect()
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.3 + GRACE, elapsed  # libpq alone could not go below 2 s
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)
    assert postgres_server.password not in str(info.value)


@both_async_drivers
async def test_async_deaf_listener_sub_second_connect_timeout(
    make_async_engine: Any, postgres_server: Any
) -> None:
    with DeafListener() as deaf:
        engine = make_async_engine(
            deaf.url(postgres_server.url), connect_timeout=0.3, retry_attempts=1
        )
        started = time.monotonic()
        with pytest.raises(poolguard.ConnectTimeout) as info:
            async with engine.connect():
                pass
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.3 + GRACE, elapsed
    assert isinstance(info.value, sqlalchemy.exc.OperationalError)


@both_async_drivers
async def test_async_blackhole_bounded_by_deadline(
    make_async_engine: Any, fault_proxy: Any, postgres_server: Any
) -> None:
    proxy = fault_proxy(postgres_server)
    engine = make_async_engine(proxy.url(postgres_server.url))
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(poolguard.QueryTimeout):
        async with poolguard.deadline(0.8), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert time.monotonic() - started < 0.8 + GRACE
    proxy.clear()
