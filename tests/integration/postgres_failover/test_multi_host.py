"""Multi-host URLs end to end against a real primary/standby set (``pg_replica_set``).

- ``postgresql://app:pw@h:p1,h:p2/app?target_session_attrs=read-write`` works as a URL and as
  ``DATABASE_URL`` (the old code refused it: SQLAlchemy cannot parse a comma in the netloc);
- the connect timeout applies per host, as libpq's: with the first host blackholed (the old
  primary vanished without closing anything) the next host is tried and connected to. The old
  code spent the one client deadline on the first host and never tried the second;
- ``target_session_attrs=read-write`` is checked at each new connection: after a promotion, new
  connections go to the new primary, never to the standby listed first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

PORT_SQL = text("SELECT inet_server_port(), pg_is_in_recovery()")


def test_database_url_multi_host_follows_the_promotion(
    pg_replica_set: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = pg_replica_set(1)
    standby = rs.standbys[0]
    # The standby listed first: target_session_attrs must skip it.
    url = rs.multi_host_url(servers=[standby, rs.primary])
    monkeypatch.setenv("DATABASE_URL", url)
    engine = poolguard.create_engine(connect_timeout=1.0, retry_backoff_initial=0.02)
    try:
        with engine.connect() as conn:
            assert conn.execute(PORT_SQL).one() == (rs.primary.port, False)
        rs.stop_primary(crash=True)
        rs.promote()
        engine.dispose()
        with engine.connect() as conn:
            assert conn.execute(PORT_SQL).one() == (standby.port, False)
    finally:
        engine.dispose()


def test_connect_timeout_is_per_host(
    pg_replica_set: Any, fault_proxy: Any, make_engine: Any
) -> None:
    rs = pg_replica_set(1)
    old, new = fault_proxy(rs.primary), fault_proxy(rs.standbys[0])
    url = rs.multi_host_url(addresses=[(old.host, old.port), (new.host, new.port)])
    old.blackhole()  # the old primary's host swallows everything, closes nothing
    rs.promote()
    engine = make_engine(url, connect_timeout=1.0, retry_attempts=1)
    with poolguard.deadline(10), engine.connect() as conn:
        assert conn.execute(PORT_SQL).one() == (rs.primary.port, False)


async def test_connect_timeout_is_per_host_async(
    pg_replica_set: Any, fault_proxy: Any, make_async_engine: Any
) -> None:
    rs = pg_replica_set(1)
    old, new = fault_proxy(rs.primary), fault_proxy(rs.standbys[0])
    url = rs.multi_host_url(addresses=[(old.host, old.port), (new.host, new.port)])
    old.blackhole()
    await asyncio.to_thread(rs.promote)
    engine = make_async_engine(url, connect_timeout=1.0, retry_attempts=1)
    with poolguard.deadline(10):
        async with engine.connect() as conn:
            assert (await conn.execute(PORT_SQL)).one() == (rs.primary.port, False)
