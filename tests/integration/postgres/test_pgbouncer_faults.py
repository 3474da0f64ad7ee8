"""PgBouncer's own faults under load, in transaction and session pooling.

A PgBouncer restart (the process), ``PAUSE``/``RESUME``, ``RECONNECT``, the admin console's
``KILL``, and a PostgreSQL restart behind PgBouncer, each met by threads and asyncio tasks at
once running reads, plain writes and ``run_transaction`` units (ledger transfers, unique
inserts), breaker and budget at defaults.
Invariants, not speed:

- a read never surfaces an error, and inside every transaction it sees ``statement_timeout``
  as configured (``SET LOCAL``: a server connection PgBouncer opened after the fault gets it
  too) and no other client's transaction-local setting (no leaked session state);
- ``run_transaction`` units surface nothing (re-run when safe; lost COMMITs resolved);
- money is conserved; every acknowledged insert is present exactly once, none applied twice; a
  plain write that failed without being ambiguous is absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from mixed_load import ACCOUNTS, START, MixedLoad, Step
from sqlalchemy import Row, text

import poolguard

pytestmark = [pytest.mark.postgres, pytest.mark.pgbouncer, pytest.mark.chaos, pytest.mark.slow]

DEADLINE = 10.0
GRACE = 2.0  # generous: the CPU is shared; a PAUSE holds callers forever
QUERY_TIMEOUT = "3s"
DOWNTIME = 1.0
WARMUP = 0.6
COOLDOWN = 1.0
MODES = ["transaction", "session"]

_READ = text(
    "SELECT current_setting('statement_timeout'), current_setting('pg.probe', true),"
    " (SELECT sum(balance) FROM pgb_accounts)"
)
_PROBE = text("SELECT set_config('pg.probe', :token, true)")  # transaction-local


def _check_read(row: Row[Any]) -> None:
    timeout, probe, total = row
    assert timeout == QUERY_TIMEOUT, f"statement_timeout {timeout!r} in a read transaction"
    assert probe in (None, ""), f"another client's transaction-local setting leaked: {probe!r}"
    assert total == ACCOUNTS * START


def _probe(n: int) -> Step:
    """Each unit sets a transaction-local value first: a read must never see it."""
    return _PROBE, {"token": f"unit-{n}"}


def _pause(bouncer: Any) -> None:
    bouncer.pause()
    time.sleep(DOWNTIME)
    bouncer.resume()


def _reconnect(bouncer: Any) -> None:
    for _ in range(3):
        bouncer.reconnect()
        time.sleep(0.3)


FAULTS: dict[str, Callable[[Any], None]] = {
    "bouncer_restart": lambda b: b.restart(downtime=DOWNTIME),
    "pause_resume": _pause,
    "reconnect": _reconnect,
    "postgres_restart": lambda b: b.upstream.restart(downtime=DOWNTIME),
    "admin_kill": lambda b: b.kill_connections(),  # KILL app (every client dropped), RESUME
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("pool_mode", MODES)
async def test_pgbouncer_fault_under_load(
    pool_mode: str, fault: str, dedicated_server: Any, make_engine: Any, make_async_engine: Any
) -> None:
    bouncer = dedicated_server("pgbouncer", pool_mode=pool_mode)
    options: dict[str, Any] = {
        "pgbouncer": "on",
        "query_timeout": float(QUERY_TIMEOUT[:-1]),
        "pool_size": 3,
        "max_overflow": 2,
        "retry_attempts": 100,
        "retry_timeout": DEADLINE,
    }
    engine = make_engine(bouncer.url, **options)
    aengine = make_async_engine(bouncer.url, **options)
    load = MixedLoad(
        engine,
        aengine,
        prefix="pgb",
        deadline=DEADLINE,
        resolve_ambiguous=True,
        read=_READ,
        check_read=_check_read,
        prelude=_probe,
    )
    load.create_schema()
    times: list[float] = []

    def run_fault() -> None:
        time.sleep(WARMUP)
        times.append(time.monotonic())
        FAULTS[fault](bouncer)
        times.append(time.monotonic())
        time.sleep(COOLDOWN)

    out = await load.run(run_fault)

    snap, asnap = poolguard.stats(engine), poolguard.stats(aengine)
    print(
        f"\n{pool_mode}/{fault}: ok={len(out.ok_times)} errors={out.counts()}"
        f" longest gap without a success={out.longest_gap():.2f}s"
        f" ambiguous={len(out.ambiguous)} retries={snap['retries_by_reason']}"
        f" async retries={asnap['retries_by_reason']}"
    )
    for kind in ("read", "unit", "transfer"):
        assert out.errors[kind] == [], f"{kind}: {out.errors[kind][:3]!r}"
    for exc in out.errors["write"]:  # a lone write may only fail as the rule says
        assert not isinstance(exc, AssertionError), exc
    assert any(t < times[0] for t in out.ok_times)
    assert any(t > times[1] for t in out.ok_times)
    with engine.connect() as conn:
        load.check_final(conn)


@pytest.mark.parametrize("pool_mode", MODES)
def test_pause_longer_than_deadline_is_bounded(
    pool_mode: str, dedicated_server: Any, make_engine: Any
) -> None:
    """Callers held by PAUSE end at their deadline; no half-used connection stays pooled.

    Session pooling holds only sessions that have no server yet: a pooled one keeps its own.
    A fresh engine's first connection runs the dialect's own queries (``select version()``):
    PgBouncer answers the login from its cache and holds those too (on the old code they
    waited for ``query_wait_timeout``, set to 15 s here; PgBouncer's default is 120 s).
    """
    bouncer = dedicated_server(
        "pgbouncer", pool_mode=pool_mode, config={"query_wait_timeout": "15"}
    )
    warm = make_engine(bouncer.url, pgbouncer="on", pool_size=2, max_overflow=0)
    with warm.connect() as conn:
        conn.execute(text("SELECT 1"))
    bouncer.pause()
    try:
        if pool_mode == "session":
            with poolguard.deadline(5), warm.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
            warm.dispose()  # new sessions wait for a server
        fresh = make_engine(bouncer.url, pgbouncer="on", pool_size=2, max_overflow=0)
        for engine, deadline in ((warm, 0.5), (warm, 1.0), (fresh, 0.5), (fresh, 1.0)):
            started = time.monotonic()
            with (
                pytest.raises(poolguard.PoolguardError),
                poolguard.deadline(deadline),
                engine.connect() as conn,
            ):
                conn.execute(text("SELECT 1"))
            assert time.monotonic() - started < deadline + GRACE  # the PAUSE alone: forever
    finally:
        bouncer.resume()
    for engine in (warm, fresh):
        for _ in range(3):  # every pooled connection serves again
            with poolguard.deadline(5), engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
