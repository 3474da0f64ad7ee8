"""A connection that a checkout reconnected in place (its record had been invalidated) is checked
like any other at its *next* checkout: once a disconnect has made the pool suspect, it is
validated before use.

Found by the Celery example's test (tests/integration/frameworks/test_celery.py): after a storm
of ``pg_terminate_backend``, each pooled record had been reconnected in place, and a plain read
through ``engine.connect()`` gave up after 3 attempts: each attempt took another killed
connection without validating it (its "made for this checkout" mark was still set from the
checkout that had reconnected it), so the retries never reached a new connection.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

POOL = 4  # more idle connections than retry attempts
#: Only to fail instead of hanging, never a performance bound.
HANG_GUARD = 30.0


def test_records_reconnected_in_place_are_validated_when_suspect(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    # validate_idle off: only the suspect rule (a disconnect seen) stands between a checkout
    # and a dead pooled connection, whatever the timing.
    engine = make_engine(postgres_server.url, pool_size=POOL, retry_attempts=3, validate_idle=None)
    conns = [engine.connect() for _ in range(POOL)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
        conn.invalidate()  # the record keeps its slot, without a connection
        conn.close()
    conns = [engine.connect() for _ in range(POOL)]  # each record reconnects in place
    for conn in conns:
        conn.execute(text("SELECT 1"))
        conn.commit()  # returned with no transaction: no deferred ROLLBACK to meet the kill
        conn.close()
    assert poolguard.stats(engine)["idle"] == POOL

    assert postgres_server.kill_connections(application_name=app_name) == POOL
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    stats = poolguard.stats(engine)
    assert stats["give_ups"] == 0
    assert stats["validation_failures"] >= 1  # the other killed ones were found by validation


def test_records_reconnected_by_keepalive_are_validated_when_suspect(
    make_engine: Any, postgres_server: Any, app_name: str
) -> None:
    engine = make_engine(
        postgres_server.url,
        pool_size=POOL,
        retry_attempts=3,
        validate_idle=None,
        max_idle=None,
        keepalive=0.1,
    )
    conns = [engine.connect() for _ in range(POOL)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
        conn.commit()
        conn.close()
    assert postgres_server.kill_connections(application_name=app_name) == POOL
    stop = time.monotonic() + HANG_GUARD
    while poolguard.stats(engine)["connects"] < 2 * POOL:  # keepalive found them, reconnected
        assert time.monotonic() < stop, "keepalive never replaced the killed connections"
        time.sleep(0.02)
    poolguard.reconfigure(engine, keepalive=None)  # no sweep from now on: only checkouts act

    assert postgres_server.kill_connections(application_name=app_name) == POOL
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert poolguard.stats(engine)["give_ups"] == 0
