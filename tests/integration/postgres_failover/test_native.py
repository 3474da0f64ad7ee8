"""The native psycopg_pool wrapper (``poolguard.postgres``) through a failover.

A multi-host URL reaches libpq in its own form (``?host=h1,h2&port=p1,p2``); after the primary
is demoted read-only and its standby promoted, the pool's idle connections to the old primary
still answer a ping: each is now replaced at checkout (its server reports the wrong role for
``target_session_attrs``) instead of being reused, and every write (``25006``: rejected, not
applied) lands on the new primary. Without the role check all 20 writes failed here (the
validated old connections were reused by every attempt).
"""

from __future__ import annotations

from typing import Any

import pytest

import poolguard.postgres

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def test_native_pool_writes_follow_the_promotion(pg_replica_set: Any) -> None:
    rs = pg_replica_set(1)
    pool = poolguard.postgres.create_pool(
        rs.multi_host_url(), pool_size=6, connect_timeout=1.0, retry_backoff_initial=0.02
    )
    try:
        pool.wait()
        pool.execute("CREATE TABLE t (x int)")
        held = [pool.getconn() for _ in range(6)]
        for conn in held:
            pool.putconn(conn)
        rs.make_read_only()
        rs.wait_replayed()
        new = rs.promote()
        failed = []
        for n in range(20):
            try:
                pool.execute("INSERT INTO t VALUES (%s)", (n,))
            except Exception as exc:  # the test counts them
                failed.append(exc)
        assert not failed, f"{len(failed)} of 20 writes failed: {failed[0]!r}"
        assert pool.fetchone("SELECT inet_server_port(), count(*) FROM t") == (new.port, 20)
    finally:
        pool.close()
