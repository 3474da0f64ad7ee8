"""``run_transaction(..., resolve_ambiguous=True)`` across a failover stays ambiguous.

The lost COMMIT's fate is asked of a fresh connection, which after a failover reaches the
promoted server. There ``pg_xact_status(xid)`` may describe a *different* transaction that got
the same xid (when the lost one's WAL never reached the standby), and the recorded backend pid
belongs to someone else's session. The xid marker now carries the server's timeline; on another
timeline the outcome is left ambiguous. The old code resolved it from the new primary.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from poolguard.errors import AmbiguousResultError
from poolguard.integrations.sqlalchemy import transaction
from poolguard.integrations.sqlalchemy.engine import guard_of

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def test_no_resolution_on_another_timeline(pg_replica_set: Any, make_engine: Any) -> None:
    rs = pg_replica_set(1)
    engine = make_engine(rs.multi_host_url())
    with engine.begin() as conn:
        marker = tuple(conn.execute(transaction._XID_SQL).one())
        conn.execute(text("CREATE TABLE t (x int)"))  # a real write: the xid is in the WAL
    lost = AmbiguousResultError("the COMMIT's reply was lost")
    state = guard_of(engine)
    # Same server, same timeline: resolved as before.
    assert transaction._resolve(engine, state, marker, lost) is True
    rs.wait_replayed()
    rs.stop_primary(crash=True)
    rs.promote()
    with pytest.raises(AmbiguousResultError):
        transaction._resolve(engine, state, marker, lost)
    assert state.guard.stats.count("ambiguous_unresolved.timeline") == 1


def test_native_pool_no_resolution_on_another_timeline(pg_replica_set: Any) -> None:
    import poolguard.postgres
    from poolguard.integrations.psycopg_pool._rules import XID_SQL

    rs = pg_replica_set(1)
    pool = poolguard.postgres.create_pool(rs.multi_host_url(), connect_timeout=1.0)
    try:
        with pool.connection() as conn:
            marker = conn.execute(XID_SQL).fetchone()
            conn.execute("CREATE TABLE t (x int)")
        assert pool._pg_resolve(marker) is True  # same timeline: resolved as before
        rs.wait_replayed()
        rs.stop_primary(crash=True)
        new = rs.promote()
        assert pool.fetchval("SELECT inet_server_port()", idempotent=True) == new.port
        assert pool._pg_resolve(marker) is None  # unknowable: stays ambiguous
        assert pool._pg.guard.stats.count("ambiguous_unresolved.timeline") == 1
    finally:
        pool.close()
