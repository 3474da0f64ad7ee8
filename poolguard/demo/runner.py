"""Run each scenario twice — vanilla, then poolguard — on the same servers and the same fault.

One side's run: fresh bank tables, build the side's engine and Redis client, start the
workload, let it warm up, inject the fault (in a thread, bounded by the fault itself), let the
workload run on for a cool-down, stop and join every worker, then check the database and Redis:
money conserved, which transfers are stored, which INCRs landed more than once.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.pool import NullPool

from poolguard.demo.scenarios import Scenario, Servers, run_fault
from poolguard.demo.workload import (
    ACCOUNTS,
    START_BALANCE,
    Request,
    Side,
    Workload,
    driver_url,
    poolguard_side,
    reset_bank,
    vanilla_side,
)

__all__ = ["CONFIG", "Progress", "ScenarioRun", "SideRun", "run_scenarios", "servers"]

#: poolguard's configuration for the demo, as the app would set it in its environment.
CONFIG: dict[str, str] = {
    "POOLGUARD_CONNECT_TIMEOUT": "1s",
    "POOLGUARD_QUERY_TIMEOUT": "2s",
    "POOLGUARD_RETRY_TIMEOUT": "4s",
    "POOLGUARD_REDIS_QUERY_TIMEOUT": "250ms",
}
#: The socket timeout vanilla redis-py gets: the same bound as poolguard's Redis query timeout.
VANILLA_REDIS_TIMEOUT = 0.25
WARMUP = 1.0
COOLDOWN = 1.5
#: How long stopping waits for a request still running (vanilla has no deadline).
JOIN_TIMEOUT = 5.0

#: progress(scenario, side, phase, counts) — phase: "warmup", "fault", "cooldown", "done".
Progress = Callable[[Scenario, str, str, dict[str, int]], None]


@dataclass
class SideRun:
    """What one side's run measured."""

    side: str
    requests: list[Request]
    fault_started: float  # seconds since the side's run started
    fault_ended: float
    total_money: int
    expected_money: int
    stored_transfers: set[str]
    incr_values: dict[str, int]  # Redis key -> its value after the run
    stats: dict[str, Any] = field(default_factory=dict)  # poolguard.stats(engine), poolguard side


@dataclass
class ScenarioRun:
    scenario: Scenario
    length: float
    sides: dict[str, SideRun] = field(default_factory=dict)


def _overrides(config: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The env-style CONFIG as keyword overrides for the SQL engine and the Redis client."""
    sql: dict[str, str] = {}
    cache: dict[str, str] = {}
    for name, value in config.items():
        key = name.removeprefix("POOLGUARD_").lower()
        if key.startswith("redis_"):
            cache[key.removeprefix("redis_")] = value
        else:
            sql[key] = value
    return sql, {**sql, **cache}


@contextlib.contextmanager
def servers(own: dict[str, str] | None = None) -> Iterator[Servers]:
    """The user's servers (``own``: kind -> URL) and embedded ones for the rest; the embedded
    ones are stopped at the end (also on Ctrl-C)."""
    from poolguard.demo.own import OwnServer
    from poolguard.testing import FaultProxy, MySQLServer, PostgresServer, RedisServer

    given = own or {}
    with contextlib.ExitStack() as stack:

        def server(kind: str, factory: Any) -> Any:
            if kind in given:
                return OwnServer(kind, given[kind])
            return stack.enter_context(factory())

        pg = server("postgres", PostgresServer)
        rds = server("redis", RedisServer)
        my = server("mysql", MySQLServer)
        proxy = stack.enter_context(FaultProxy(pg.host, pg.port))
        yield Servers(postgres=pg, redis=rds, pg_proxy=proxy, mysql=my)


def _build(name: str, srv: Servers, scenario: Scenario) -> Side:
    url = _database_url(srv, scenario)
    if name == "vanilla":
        return vanilla_side(url, srv.redis.url, VANILLA_REDIS_TIMEOUT)
    sql, cache = _overrides(CONFIG)
    return poolguard_side(url, srv.redis.url, sql, cache, scenario.deadline)


def _database_url(srv: Servers, scenario: Scenario) -> str:
    if scenario.database == "mysql":
        return srv.mysql.url
    return srv.pg_proxy.url(srv.postgres.url) if scenario.via_proxy else srv.postgres.url


def _wait(seconds: float, tick: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.1, left))
        tick()


def run_side(
    scenario: Scenario, srv: Servers, name: str, length: float, progress: Progress
) -> SideRun:
    admin = sqlalchemy.create_engine(_admin_url(srv, scenario), poolclass=NullPool)
    undo = scenario.setup(srv) if scenario.setup is not None else None
    try:
        reset_bank(admin)
        side = _build(name, srv, scenario)
        if scenario.engine_hook is not None:
            scenario.engine_hook(srv, side.engine)
        work = Workload(side, uuid.uuid4().hex[:8], gate=srv.gate)
        try:
            work.start()

            def tick(phase: str) -> Callable[[], None]:
                return lambda: progress(scenario, name, phase, work.counts())

            _wait(WARMUP, tick("warmup"))
            fault_started = time.monotonic() - work.started
            fault = run_fault(scenario, srv, length)
            while fault.is_alive():
                fault.join(0.1)
                tick("fault")()
            fault_ended = time.monotonic() - work.started
            _wait(COOLDOWN, tick("cooldown"))
        finally:
            work.stop(JOIN_TIMEOUT)
            stats = _stats(side)
            side.close()
        progress(scenario, name, "done", work.counts())
        total, stored = _ledger(admin)
    finally:
        admin.dispose()
        if undo is not None:
            undo()
    return SideRun(
        side=name,
        requests=sorted(work.requests, key=lambda r: r.t),
        fault_started=fault_started,
        fault_ended=fault_ended,
        total_money=total,
        expected_money=ACCOUNTS * START_BALANCE,
        stored_transfers=stored,
        incr_values=_incr_values(srv, [r.key for r in work.requests if r.kind == "incr"]),
        stats=stats,
    )


def _stats(side: Side) -> dict[str, Any]:
    """poolguard's own counters for its side (retries, ambiguous outcomes resolved)."""
    if side.name != "poolguard":
        return {}
    import poolguard

    return dict(poolguard.stats(side.engine))


def _admin_url(srv: Servers, scenario: Scenario) -> sqlalchemy.URL:
    # The app's own login on the bank's server (it owns the tables), without a pool.
    return driver_url(srv.mysql.url if scenario.database == "mysql" else srv.postgres.url)


def _ledger(admin: sqlalchemy.Engine) -> tuple[int, set[str]]:
    with admin.connect() as conn:
        total = int(conn.execute(text("SELECT sum(balance) FROM demo_account")).scalar_one())
        stored = set(conn.execute(text("SELECT id FROM demo_transfer")).scalars())
    return total, stored


def _incr_values(srv: Servers, keys: Sequence[str]) -> dict[str, int]:
    if not keys:
        return {}
    with redis.Redis.from_url(srv.redis.admin_url, socket_timeout=10) as client:
        values = client.mget(keys)
    return {k: int(v) if v is not None else 0 for k, v in zip(keys, values, strict=True)}


def run_scenarios(
    scenarios: Sequence[Scenario],
    srv: Servers,
    *,
    length: float | None = None,
    progress: Progress | None = None,
) -> Iterator[ScenarioRun]:
    """Each scenario, vanilla then poolguard; yields each scenario's run as it finishes."""
    report: Progress = progress or (lambda *_: None)
    for scenario in scenarios:
        run = ScenarioRun(scenario, length if length is not None else scenario.length)
        for name in ("vanilla", "poolguard"):
            run.sides[name] = run_side(scenario, srv, name, run.length, report)
        yield run
