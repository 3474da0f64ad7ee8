"""The old primary vanishes without closing anything (blackholed by the fault proxy, frozen)
while its standby is promoted; callers run under a deadline no longer than the connect timeout.

libpq tries a multi-host URL's hosts in the order written, so every new connection first
waited out the connect timeout on the vanished host: with a 1 s deadline and
``connect_timeout=1`` the old code never reached the new primary (0 successes in 8 s,
measured). Now the host that failed its last attempt is tried last (the one that accepted the
last connection first): after a few calls cut by their deadline, every call is served by the
new primary. Counted, not timed; the time is printed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

CALLS = 40
STREAK = 10  # consecutive successes that mean "the pool is serving again"


def test_blackholed_primary_the_pool_serves_from_the_new_one(
    pg_replica_set: Any, fault_proxy: Any, make_engine: Any
) -> None:
    rs = pg_replica_set(1)
    old, new = fault_proxy(rs.primary), fault_proxy(rs.standbys[0])
    url = rs.multi_host_url(addresses=[(old.host, old.port), (new.host, new.port)])
    engine = make_engine(url, connect_timeout=1.0, pool_size=2, query_timeout=2)
    held = [engine.connect() for _ in range(2)]
    for conn in held:
        conn.execute(text("SELECT 1"))
        conn.close()

    fault = time.monotonic()
    old.blackhole()
    rs.primary.freeze()
    promoted = rs.promote()
    failures, streak, first_ok = 0, 0, None
    for _ in range(CALLS):
        try:
            with poolguard.deadline(1.0), engine.connect() as conn:
                port = conn.execute(text("SELECT inet_server_port()")).scalar_one()
            assert port == promoted.port
            streak += 1
            first_ok = first_ok or time.monotonic()
        except poolguard.PoolguardError:
            failures, streak = failures + 1, 0
        if streak == STREAK:
            break
    assert streak == STREAK, f"not serving from the new primary after {CALLS} calls"
    assert first_ok is not None
    print(
        f"\nblackholed primary: {failures} calls cut by their 1 s deadline, first success "
        f"{first_ok - fault:.2f}s after the fault, then {STREAK} in a row"
    )
