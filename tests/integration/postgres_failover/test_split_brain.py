"""Split brain and read routing on a real primary/standby set.

Split brain: the old primary crashes, its standby is promoted, then the old primary comes back
*writable* on its old address (no fencing). Both servers now say "read-write" and nothing a
client can read cheaply tells them apart (same system identifier; the timelines differ, but
only the HA manager knows which one is current). libpq with ``target_session_attrs=read-write``
takes the first writable host in the order written: the stale one, listed first. Within a
process that saw the failover, poolguard keeps sending new connections to the promoted primary
(the host whose last attempt failed is tried last, the one that accepted the last connection
first); a *new* process has no such memory and goes to the stale one: fencing the old primary
is the HA manager's job (Patroni's leader lock, RDS/Cloud SQL's own).

Read routing: an engine with ``target_session_attrs=prefer-standby`` reads from the standby and
falls back to the primary when no standby is left.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

PORT_SQL = text("SELECT inet_server_port(), pg_is_in_recovery()")


def test_a_stale_primary_coming_back_writable_gets_no_new_connection(
    pg_replica_set: Any, make_engine: Any
) -> None:
    rs = pg_replica_set(1)
    stale = rs.primary
    engine = make_engine(rs.multi_host_url(), pool_size=2)  # the stale host is listed first
    with engine.connect() as conn:
        assert conn.execute(PORT_SQL).one() == (stale.port, False)
    rs.stop_primary(crash=True)
    new = rs.promote()
    with engine.connect() as conn:  # met the dead host, reconnected to the new primary
        assert conn.execute(PORT_SQL).one() == (new.port, False)
    stale.restart()  # back on its old port, writable: split brain
    assert stale.psql("SELECT pg_is_in_recovery()") == "f"
    engine.dispose()  # every connection made anew
    for _ in range(5):
        with engine.connect() as conn:
            assert conn.execute(PORT_SQL).one() == (new.port, False)


def test_prefer_standby_reads_fall_back_to_the_primary(
    pg_replica_set: Any, make_engine: Any
) -> None:
    rs = pg_replica_set(1)
    standby = rs.standbys[0]
    reads = make_engine(rs.multi_host_url("prefer-standby"), pool_size=2)
    with reads.connect() as conn:
        assert conn.execute(PORT_SQL).one() == (standby.port, True)
    standby.stop()
    reads.dispose()
    with reads.connect() as conn:
        assert conn.execute(PORT_SQL).one() == (rs.primary.port, False)
