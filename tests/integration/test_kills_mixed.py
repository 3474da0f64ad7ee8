"""Sessions killed server-side every 300 ms while threads and asyncio tasks run a web app's mix.

Reads, single-statement writes and ``run_transaction`` transfers, from a sync engine (threads) and
an async engine (tasks) at once, breaker and budget at their defaults, on PostgreSQL and MariaDB.
Invariants, not speed:

- a read never surfaces an error (the first statement of its transaction, idempotent);
- a transfer surfaces nothing but AmbiguousResultError (a lost COMMIT reply), and on PostgreSQL
  with ``resolve_ambiguous=True`` not even that; money is conserved whatever happened;
- every acknowledged write is present exactly once; a write that failed is absent unless its
  failure was ambiguous (a write killed mid-statement in its own transaction is rolled back by the
  server and surfaces: poolguard never re-sends a non-idempotent statement).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from mixed_load import MixedLoad

import poolguard

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RUN_FOR = 4.0
KILL_EVERY = 0.3
DEADLINE = 5.0


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
async def test_mix_survives_sessions_killed_every_300ms(
    kind: str, dedicated_server: Any, make_engine: Any, make_async_engine: Any
) -> None:
    server = dedicated_server(kind)
    pg = kind == "postgres"
    engine = make_engine(server.url, pool_size=3, max_overflow=2, retry_attempts=5)
    aengine = make_async_engine(server.url, pool_size=3, max_overflow=2, retry_attempts=5)
    load = MixedLoad(
        engine,
        aengine,
        prefix="mix",
        kinds=("read", "write", "transfer"),
        deadline=DEADLINE,
        pause=0.0,
        resolve_ambiguous=pg,
    )
    load.create_schema()
    kills = [0]

    def killer() -> None:
        until = time.monotonic() + RUN_FOR
        while time.monotonic() < until:
            time.sleep(KILL_EVERY)
            kills[0] += server.kill_connections()

    out = await load.run(killer)

    done = len(out.ok_times)
    print(f"\n{kind}: kills={kills[0]} done={done} errors={out.counts()}", len(out.ambiguous))
    assert kills[0] >= 5
    assert done > 50
    assert out.errors["read"] == []
    transfer_errors = [e for e in out.errors["transfer"] if not _ambiguous(e) or pg]
    assert transfer_errors == []
    with engine.connect() as conn:
        present = load.check_final(conn)  # money conserved, no write lost or applied twice
    assert present <= out.acked | out.ambiguous  # a write that failed plainly was not applied
    for exc in out.errors["write"]:  # what a killed write may surface, and nothing else
        assert isinstance(exc, (poolguard.AmbiguousResultError, _dropin_operational())), exc


def _ambiguous(exc: BaseException) -> bool:
    return isinstance(exc, poolguard.AmbiguousResultError)


def _dropin_operational() -> type[BaseException]:
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError
