"""MariaDB primary/replica switchover under load, the app's URL repointed (a VIP/DNS move).

A real GTID pair (``poolguard.testing``'s :class:`MariaDBReplicaSet`), the app connected
through the fault proxy, which plays the VIP: after ``switchover()`` it sends new connections to
the new primary while the open ones stay on the old, now ``read_only``, server. Threads and
asyncio tasks at once run reads, plain writes and ``run_transaction`` units (unique inserts,
ledger transfers), breaker and budget at their defaults, through two switchovers (there and
back). Invariants:

- reads and ``run_transaction`` units surface no error: a statement or COMMIT the read-only
  server refused (1290) was never applied, so the unit is re-run, on a connection to the new
  primary; a plain write's first statement is re-run the same way;
- a plain transaction whose COMMIT was refused (MariaDB refuses the COMMIT of a transaction that
  wrote before ``read_only=ON``, measured) cannot be replayed by poolguard: it surfaces 1290,
  and that insert is absent;
- money is conserved; every acknowledged insert is present on the final primary exactly once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mixed_load import MixedLoad
from sqlalchemy import text

import poolguard
from poolguard.testing.servers import ServerUnavailable
from poolguard.testing.servers.mysql_replication import MariaDBReplicaSet

pytestmark = [pytest.mark.mysql, pytest.mark.chaos, pytest.mark.slow]

DEADLINE = 10.0
WARMUP = 0.6
BETWEEN = 1.5  # between the two switchovers, and after the last one


@pytest.fixture
def replica_set() -> Iterator[MariaDBReplicaSet]:
    if os.environ.get("POOLGUARD_TEST_MYSQL_URL") or os.environ.get("POOLGUARD_TEST_DOCKER"):
        pytest.skip("the replica set needs local server mode")
    try:
        pair = MariaDBReplicaSet().start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield pair
    finally:
        pair.stop()


async def test_writes_ride_through_switchovers(
    replica_set: MariaDBReplicaSet, fault_proxy: Any, make_engine: Any, make_async_engine: Any
) -> None:
    vip = fault_proxy(replica_set.primary)
    url = vip.url(replica_set.url)
    options: dict[str, Any] = {
        "pool_size": 3,
        "max_overflow": 2,
        "retry_attempts": 100,
        "retry_timeout": DEADLINE,
    }
    engine = make_engine(url, **options)
    aengine = make_async_engine(url, **options)
    load = MixedLoad(engine, aengine, prefix="sw", deadline=DEADLINE)
    load.create_schema()
    refused: list[float] = []
    times: list[float] = []

    def switch() -> None:
        refused.append(replica_set.switchover())
        vip.retarget(replica_set.primary.host, replica_set.primary.port)

    def run_faults() -> None:
        time.sleep(WARMUP)
        times.append(time.monotonic())
        switch()
        time.sleep(BETWEEN)
        switch()  # and back: the first primary, demoted, followed the new one
        times.append(time.monotonic())
        time.sleep(BETWEEN)

    out = await load.run(run_faults)

    snap, asnap = poolguard.stats(engine), poolguard.stats(aengine)
    print(
        f"\nswitchovers refused writes for {[round(r, 3) for r in refused]} s; longest gap"
        f" without a success={out.longest_gap():.2f}s; ok="
        f"{len(out.ok_times)} errors={out.counts()} retries={snap['retries_by_reason']}"
        f" async={asnap['retries_by_reason']} evictions={snap['evictions']}"
        f" give_ups={snap['give_ups']}+{asnap['give_ups']}"
    )
    assert len(refused) == 2
    for kind in ("read", "unit", "transfer"):
        assert out.errors[kind] == [], f"{kind}: {out.errors[kind][:3]!r}"
    for exc in out.errors["write"]:  # a refused COMMIT: never applied (checked below)
        assert "1290" in str(exc), exc
    assert any(t > times[1] for t in out.ok_times)
    with engine.connect() as conn:  # through the VIP: the final primary
        load.check_final(conn, ambiguous_may_apply=False)  # a refused write is absent
        assert conn.execute(text("SELECT @@read_only")).scalar() == 0
