"""The DESIGN anchor: idle connections killed by the server's ``wait_timeout``.

Vanilla SQLAlchemy + PyMySQL surfaces ``2006 MySQL server has gone away`` on the next query
(PyMySQL's write to the reset socket fails). poolguard surfaces nothing, by each of its three
layers on its own: validation after idle, max idle eviction, and the retry of a statement that
never left the client (2006 is raised by a failed ``sendall``: before send, so even a write is
safe to move to a fresh connection).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.mysql, pytest.mark.chaos, pytest.mark.slow]

WAIT_TIMEOUT = 2
POOL = 3


@pytest.fixture(scope="module")
def idle_killer() -> Iterator[Any]:
    """One MariaDB with wait_timeout=2 for the whole module (a start costs ~1 s)."""
    from poolguard.testing import MySQLServer

    with MySQLServer(config={"wait_timeout": str(WAIT_TIMEOUT)}) as server:
        yield server


def _fill_and_idle(engine: Any) -> None:
    """Open POOL connections, return them, let the server kill them all."""
    conns = [engine.connect() for _ in range(POOL)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
        conn.close()
    time.sleep(WAIT_TIMEOUT + 1.0)


def _requests(engine: Any, n: int) -> list[str]:
    errors: list[str] = []
    for i in range(n):
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT :i"), {"i": i}).scalar() == i
        except sqlalchemy.exc.DBAPIError as exc:
            errors.append(str(exc.orig))
    return errors


def test_vanilla_sqlalchemy_raises_server_has_gone_away(idle_killer: Any) -> None:
    url = idle_killer.url.replace("mysql://", "mysql+pymysql://")
    engine = sqlalchemy.create_engine(url, pool_size=POOL)
    try:
        _fill_and_idle(engine)
        errors = _requests(engine, 2 * POOL)
    finally:
        engine.dispose()
    assert errors, "vanilla SQLAlchemy survived wait_timeout (the anchor changed?)"
    assert "2006" in errors[0]
    assert "gone away" in errors[0]


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param({"validate_idle": 1.0, "max_idle": None}, id="validate-after-idle"),
        pytest.param({"validate_idle": None, "max_idle": 1.5}, id="max-idle"),
        pytest.param({"validate_idle": None, "max_idle": None}, id="statement-retry"),
    ],
)
def test_poolguard_surfaces_no_error(
    make_engine: Any, idle_killer: Any, layer: dict[str, Any]
) -> None:
    engine = make_engine(idle_killer.url, pool_size=POOL, **layer)
    _fill_and_idle(engine)
    assert _requests(engine, 2 * POOL) == []
    snap = poolguard.stats(engine)
    assert snap["give_ups"] == 0
    if layer["validate_idle"] is not None:
        assert snap["validation_failures"] >= 1
    elif layer["max_idle"] is not None:
        assert snap["evictions"].get("idle", 0) >= POOL
    else:
        assert snap["retries_by_reason"].get("server_gone_before_send", 0) >= 1


def test_a_write_on_a_killed_idle_connection_is_applied_once(
    make_engine: Any, idle_killer: Any
) -> None:
    # No validation, no max idle: the INSERT meets the dead socket. 2006 = nothing was sent,
    # so poolguard moves it to a fresh connection; the unique key proves it ran exactly once.
    engine = make_engine(
        idle_killer.url,
        pool_size=1,
        validate_idle=None,
        max_idle=None,
        isolation_level="AUTOCOMMIT",
    )
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS my_idle_w (id int PRIMARY KEY)"))
        conn.execute(text("DELETE FROM my_idle_w"))
    time.sleep(WAIT_TIMEOUT + 1.0)
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO my_idle_w VALUES (1)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM my_idle_w")).scalar() == 1
    assert poolguard.stats(engine)["retries_by_reason"].get("server_gone_before_send") == 1


async def test_async_poolguard_surfaces_no_error(make_async_engine: Any, idle_killer: Any) -> None:
    import asyncio

    engine = make_async_engine(idle_killer.url, pool_size=POOL, validate_idle=None, max_idle=None)
    conns = [await engine.connect() for _ in range(POOL)]
    for conn in conns:
        await conn.execute(text("SELECT 1"))
        await conn.close()
    await asyncio.sleep(WAIT_TIMEOUT + 1.0)
    for i in range(2 * POOL):
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT :i"), {"i": i})).scalar() == i
    snap = poolguard.stats(engine)
    assert snap["give_ups"] == 0
    # Found dead by one of two layers: the checkout that reads the deferred ROLLBACK's reply
    # (aiomysql's reader holds the reset: evicted, nothing retried), or the statement (the
    # write is buffered, the read finds EOF: 2013, retried).
    assert snap["retries"] + snap["evictions"]["disconnect"] >= 1
