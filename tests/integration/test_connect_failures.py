"""A server that cannot be reached: the error says so first, on every integration.

Real faults, no server needed: a refused port (a free port nobody listens on) and a host that
never answers (:class:`~poolguard.testing.DeafListener`: SYNs dropped, connect() hangs until the
client's connect timeout). Each error's headline must name the redacted ``host:port``, quote the
driver's last error, count the attempts and the time spent, and never show the password; the
circuit breaker, when it is involved, comes after (it used to be the whole headline, with
"refused" and the address only in the chained cause, and ``ConnectTimeout`` named no host).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions as rex
import sqlalchemy.exc as sa_exc
from sqlalchemy import text

import poolguard
import poolguard.postgres
import poolguard.redis
from poolguard.testing import DeafListener, free_port

PASSWORD = "Zq9-c0nnect-fail-pw"
#: Short bounds keep each case around a second; the defaults are measured in
#: benchmarks/bench_time_to_fail.py.
FAST = {"connect_timeout": 0.3, "retry_timeout": 1.0, "retry_backoff_max": 0.1}
ATTEMPTS = re.compile(r"(\d+ attempts? in \d+\.\ds|not tried|waited \d+\.\d+s)")

URLS = {
    "postgres": "postgresql://app:{pw}@{host}:{port}/app",
    "mysql": "mysql://app:{pw}@{host}:{port}/app",
    "redis": "redis://:{pw}@{host}:{port}/0",
}
#: The driver's own words for each fault, as quoted in the headline.
DRIVER_SAYS = {
    "refused": re.compile(r"refused", re.I),
    "deaf": re.compile(r"time(d)? ?out", re.I),
}


@pytest.fixture(params=["refused", "deaf"])
def unreachable(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, int]]:
    """(fault, host, port) of an address that cannot be connected to."""
    if request.param == "refused":
        yield "refused", "127.0.0.1", free_port()
        return
    deaf = DeafListener()
    try:
        yield "deaf", deaf.host, deaf.port
    finally:
        deaf.close()


def url_for(kind: str, host: str, port: int) -> str:
    return URLS[kind].format(pw=PASSWORD, host=host, port=port)


def check_headline(exc: BaseException, fault: str, host: str, port: int) -> str:
    """The message names the address and the driver's error, counts attempts and time, and no
    password appears anywhere in the error or its chain."""
    message = str(exc)
    headline = message.split(" (check that", 1)[0]
    assert re.match(rf"^\w+: cannot connect to {re.escape(host)}:{port}: ", headline), message
    assert DRIVER_SAYS[fault].search(headline), message
    assert ATTEMPTS.search(headline), message
    assert "CONNECT_TIMEOUT" in message  # then what to tune
    everything = "".join(traceback.format_exception(exc)) + repr(exc)
    assert PASSWORD not in everything
    return headline


def check_counted(engine: Any, err: poolguard.PoolguardError) -> None:
    """Every attempt of the call was a failed connect, and stats() says so (it said 0)."""
    snap = poolguard.stats(engine)
    assert err.attempts >= 1
    assert snap["connect_failures"] == err.attempts, snap
    assert snap["connects"] == 0


# --- SQLAlchemy engines: PostgreSQL and MySQL, sync and async ----------------------------------


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_engine_headline(kind: str, unreachable: tuple[str, str, int]) -> None:
    fault, host, port = unreachable
    engine = poolguard.create_engine(url_for(kind, host, port), **FAST)
    try:
        with pytest.raises(sa_exc.OperationalError) as info, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert isinstance(info.value, poolguard.PoolguardError)
    if fault == "deaf" and kind == "postgres":
        assert isinstance(info.value, poolguard.ConnectTimeout)
    check_headline(info.value, fault, host, port)
    check_counted(engine, info.value)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
async def test_async_engine_headline(kind: str, unreachable: tuple[str, str, int]) -> None:
    fault, host, port = unreachable
    engine = poolguard.create_async_engine(url_for(kind, host, port), **FAST)
    try:
        with pytest.raises(sa_exc.OperationalError) as info:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert isinstance(info.value, poolguard.PoolguardError)
    check_headline(info.value, fault, host, port)
    check_counted(engine, info.value)


def test_breaker_rejection_names_the_address_not_only_the_breaker() -> None:
    # Breaker at a low threshold, a window long enough to meet it open: the caller that
    # opened it and a caller rejected before trying both see the address and the last error.
    port = free_port()
    engine = poolguard.create_engine(
        url_for("postgres", "127.0.0.1", port),
        breaker_failures=2,
        breaker_reset=30,
        retry_timeout=0.4,
        retry_backoff_initial=0.01,
    )
    try:
        with pytest.raises(poolguard.CircuitOpenError) as first, engine.connect():
            pass
        with pytest.raises(poolguard.CircuitOpenError) as second, engine.connect():
            pass
    finally:
        engine.dispose()
    for exc in (first.value, second.value):
        assert isinstance(exc, sa_exc.OperationalError)
        headline = check_headline(exc, "refused", "127.0.0.1", port)
        assert "circuit breaker" in headline.split(": cannot connect to", 1)[1]
    assert "not tried" in str(second.value)
    assert first.value.attempts >= 2


def test_deadline_spent_while_connecting_names_the_address() -> None:
    port = free_port()
    engine = poolguard.create_engine(
        url_for("postgres", "127.0.0.1", port), breaker_failures=None, retry_timeout=30
    )
    try:
        with (
            pytest.raises(poolguard.PoolguardError) as info,
            poolguard.deadline(0.5),
            engine.connect(),
        ):
            pass
    finally:
        engine.dispose()
    headline = check_headline(info.value, "refused", "127.0.0.1", port)
    assert "deadline" in headline


# --- the native psycopg pool ---------------------------------------------------------------------

NATIVE = {"connect_timeout": 0.3, "acquire_timeout": 1.0, "pool_size": 1, "max_overflow": 0}


def test_native_pool_headline(unreachable: tuple[str, str, int]) -> None:
    import psycopg_pool

    fault, host, port = unreachable
    pool = poolguard.postgres.create_pool(url_for("postgres", host, port), **NATIVE)
    try:
        with pytest.raises(psycopg_pool.PoolTimeout) as info:
            pool.fetchall("SELECT 1")
    finally:
        pool.close(timeout=1)
    check_headline(info.value, fault, host, port)
    assert "ACQUIRE_TIMEOUT" in str(info.value)
    snap = pool.stats()
    assert snap["connect_failures"] >= 1
    assert snap["connects"] == 0


async def test_async_native_pool_headline(unreachable: tuple[str, str, int]) -> None:
    import psycopg_pool

    fault, host, port = unreachable
    pool = poolguard.postgres.create_async_pool(url_for("postgres", host, port), **NATIVE)
    await pool.open(wait=False)
    try:
        with pytest.raises(psycopg_pool.PoolTimeout) as info:
            await pool.fetchall("SELECT 1")
    finally:
        await pool.close(timeout=1)
    check_headline(info.value, fault, host, port)
    snap = pool.stats()
    assert snap["connect_failures"] >= 1
    assert snap["connects"] == 0


# --- Redis ---------------------------------------------------------------------------------------

REDIS = {"connect_timeout": 0.3, "retry_timeout": 1.0}


def test_redis_headline(unreachable: tuple[str, str, int]) -> None:
    fault, host, port = unreachable
    client = poolguard.redis.from_url(url_for("redis", host, port), **REDIS)
    try:
        with pytest.raises((rex.ConnectionError, rex.TimeoutError)) as info:
            client.get("k")
    finally:
        client.close()
    assert isinstance(info.value, poolguard.PoolguardError)
    check_headline(info.value, fault, host, port)


async def test_async_redis_headline(unreachable: tuple[str, str, int]) -> None:
    fault, host, port = unreachable
    client = poolguard.redis.async_from_url(url_for("redis", host, port), **REDIS)
    try:
        with pytest.raises((rex.ConnectionError, rex.TimeoutError)) as info:
            await client.get("k")
    finally:
        await client.aclose()
    assert isinstance(info.value, poolguard.PoolguardError)
    check_headline(info.value, fault, host, port)


# --- connects and connect_failures on one engine, through a real outage --------------------------

SQL_KINDS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


def _server(kind: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("postgres_server" if kind == "postgres" else "mysql_server")


@pytest.mark.parametrize("kind", SQL_KINDS)
def test_stats_count_failed_and_successful_connects(
    kind: str, request: pytest.FixtureRequest, fault_proxy: Any
) -> None:
    server = _server(kind, request)
    proxy = fault_proxy(server)
    proxy.down()  # refused
    engine = poolguard.create_engine(proxy.url(server.url), **FAST)
    try:
        with pytest.raises(poolguard.PoolguardError) as info, engine.connect():
            pass
        check_counted(engine, info.value)
        failed = poolguard.stats(engine)["connect_failures"]
        proxy.up()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        snap = poolguard.stats(engine)
        assert (snap["connects"], snap["connect_failures"]) == (1, failed)
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_async_stats_count_failed_and_successful_connects(
    kind: str, request: pytest.FixtureRequest, fault_proxy: Any
) -> None:
    server = _server(kind, request)
    proxy = fault_proxy(server)
    proxy.down()
    engine = poolguard.create_async_engine(proxy.url(server.url), **FAST)
    try:
        with pytest.raises(poolguard.PoolguardError) as info:
            async with engine.connect():
                pass
        check_counted(engine, info.value)
        failed = poolguard.stats(engine)["connect_failures"]
        proxy.up()
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        snap = poolguard.stats(engine)
        assert (snap["connects"], snap["connect_failures"]) == (1, failed)
    finally:
        await engine.dispose()
