"""Chaos driver: the bank app (app.py) under load while PostgreSQL or Redis misbehaves.

    cd examples
    python -m fastapi_app.chaos            # every fault, sync + async, poolguard vs the anchor
    python -m fastapi_app.chaos --faults pg_restart --modes async --stacks poolguard -v

It starts a throw-away PostgreSQL and Redis (``poolguard.testing``), serves the app with uvicorn
in a thread on a loopback port (so ``def`` endpoints really run in FastAPI's thread pool and
``async def`` ones on the server's event loop), and drives it with a few client threads and a
few asyncio tasks — reads, cached reads and transfers — while one fault happens:

    pg_restart     PostgreSQL stops, stays down 1.5 s, starts again
    pg_freeze      PostgreSQL SIGSTOPped for 3 s (connections open, nothing answers); this run
                   gives the app a 2 s deadline, so each request must be cut at its deadline
    pg_kills       every client backend pg_terminate_backend-ed every 300 ms, for 3 s
    redis_restart  Redis stops, stays down 1.5 s, starts again

Then it checks invariants, not speed (:func:`violations`): money is conserved and every
balance matches the ledger; every acknowledged transfer is stored exactly once; no transfer the
app called failed is stored; none stored that was never sent; no request took longer than the
app's deadline + 1 s; every answer is a 200 or a 503 (no crash, no hang past the client's
timeout); no driver error escaped poolguard bare (what it cannot hide, it raises as
its own error, saying what happened); and, for the faults a poolguard app must hide, no request
failed at all.

The *anchor* is the same app on plain SQLAlchemy (``pool_pre_ping=True``) and plain redis-py
``from_url``: what poolguard is compared with. The table printed at the end has one row per
(fault, mode, stack): requests, errors, max latency, and whether the ledger held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import redis
import redis.asyncio
import sqlalchemy
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

import poolguard

from .app import (
    DEADLINE,
    START_BALANCE,
    Account,
    Base,
    Stack,
    Transfer,
    create_app,
    poolguard_stack,
)

if TYPE_CHECKING:
    from poolguard.testing import LocalServer

FAULTS = ("pg_restart", "pg_freeze", "pg_kills", "redis_restart")
MODES = ("sync", "async")
STACKS = ("poolguard", "anchor")
ACCOUNTS = 10
THREAD_CLIENTS = 3
TASK_CLIENTS = 3
WARMUP = 1.0  # load before the fault starts (s), and until MIN_OK requests succeeded
COOLDOWN = 1.5  # load after the fault ended (s), and until MIN_OK requests succeeded again
MIN_OK = 6
#: A shared, loaded box may start slowly; an app that has not recovered this long after the
#: fault ended has failed (violations() says so).
SETTLE_MAX = 15.0
PAUSE = 0.01  # each client's think time between requests (s)
DOWNTIME = 1.5  # restart faults
FREEZE_FOR = 3.0
KILL_EVERY = 0.3
KILL_FOR = 3.0
#: The app's per-request deadline in each fault's run (default: the app's DEADLINE). The
#: freeze outlasts its deadline on purpose: poolguard's backstop must end every request at
#: the deadline, where plain SQLAlchemy waits for the thaw.
DEADLINES = {"pg_freeze": 2.0}
#: How much a request may outlive the app's deadline (HTTP, scheduling on a loaded box).
LATENCY_GRACE = 1.0
#: The client gives up on a request after this long (a bound for the anchor's hangs).
CLIENT_TIMEOUT = DEADLINE + 10.0
#: What poolguard raises when it cannot hide a failure (as a drop-in subclass, e.g.
#: "QueryTimeout_OperationalError"): it says what happened, after how many attempts.
POOLGUARD_ERRORS = tuple(
    f"{name}_"
    for name in (
        "AmbiguousResultError",
        "CircuitOpenError",
        "ConnectTimeout",
        "PoolTimeout",
        "QueryTimeout",
        "TransactionTimeout",
        "PoolguardError",
    )
)
#: Which request kinds must see no error at all, per fault, for the poolguard app.
MUST_NOT_FAIL = {
    "pg_restart": frozenset({"read", "cached", "transfer"}),
    "redis_restart": frozenset({"read", "cached", "transfer"}),
    "pg_kills": frozenset({"read", "cached"}),
    "pg_freeze": frozenset(),
}


# --- the faults --------------------------------------------------------------------------------


def _pg_restart(pg: LocalServer, rds: LocalServer) -> None:
    pg.restart(downtime=DOWNTIME)


def _pg_freeze(pg: LocalServer, rds: LocalServer) -> None:
    with pg.frozen():
        time.sleep(FREEZE_FOR)


def _pg_kills(pg: LocalServer, rds: LocalServer) -> None:
    start = time.monotonic()
    for n in range(1, int(KILL_FOR / KILL_EVERY) + 1):
        time.sleep(max(0.0, start + n * KILL_EVERY - time.monotonic()))
        pg.kill_connections()


def _redis_restart(pg: LocalServer, rds: LocalServer) -> None:
    rds.restart(downtime=DOWNTIME)


FAULT_ACTIONS: dict[str, Callable[[LocalServer, LocalServer], None]] = {
    "pg_restart": _pg_restart,
    "pg_freeze": _pg_freeze,
    "pg_kills": _pg_kills,
    "redis_restart": _redis_restart,
}


# --- the anchor: the same app on plain SQLAlchemy + redis-py -----------------------------------


def _plain_transact(sessions: sessionmaker[Session], fn: Callable[[Session], None]) -> None:
    with sessions.begin() as session:
        fn(session)


async def _plain_atransact(sessions: async_sessionmaker[AsyncSession], afn: Any) -> None:
    async with sessions.begin() as session:
        await afn(session)


def _psycopg_url(url: str) -> sqlalchemy.URL:
    return make_url(url).set(drivername="postgresql+psycopg")


def anchor_stack(database_url: str, redis_url: str) -> Stack:
    """What the app would use without poolguard: pre-ping, redis-py's own from_url."""
    url = _psycopg_url(database_url)
    return Stack(
        engine=sqlalchemy.create_engine(url, pool_pre_ping=True),
        aengine=create_async_engine(url, pool_pre_ping=True),
        cache=redis.Redis.from_url(redis_url, decode_responses=True),
        acache=redis.asyncio.Redis.from_url(redis_url, decode_responses=True),
        transact=_plain_transact,
        atransact=_plain_atransact,
    )


STACK_FACTORIES: dict[str, Callable[[str, str], Stack]] = {
    "poolguard": poolguard_stack,
    "anchor": anchor_stack,
}


# --- what the clients saw ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the client saw it."""

    kind: str  # "read", "cached", "transfer"
    client: str  # "thread" or "task"
    started: float  # time.monotonic()
    latency: float
    status: int  # HTTP status; 0 = no response (transport error, client timeout)
    error: str  # "" on 200, else the app's error class name or the client's exception
    detail: str = ""  # the first line of the app's error message
    transfer_id: str | None = None
    # transfers: "committed", "failed" (the app says: not applied), "unknown", "duplicate" (the
    # id was already stored: clients never resend, so the unit of work ran again after a commit)
    outcome: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Ledger:
    """The database after the run."""

    total: int
    expected_total: int
    mismatched_accounts: list[int]  # balance != START + ledger inflow - ledger outflow
    stored: list[str]  # transfer ids in the ledger table


@dataclass
class RunReport:
    fault: str
    mode: str
    stack: str
    deadline: float
    calls: list[Call] = field(default_factory=list)
    fault_started: float = 0.0
    fault_ended: float = 0.0
    ledger: Ledger | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def errors(self, kind: str | None = None) -> list[Call]:
        return [c for c in self.calls if not c.ok and (kind is None or c.kind == kind)]

    def max_latency(self) -> float:
        return max((c.latency for c in self.calls), default=0.0)

    def transfers(self, outcome: str) -> set[str]:
        return {
            c.transfer_id for c in self.calls if c.transfer_id is not None and c.outcome == outcome
        }

    def error_kinds(self) -> Counter[str]:
        return Counter(f"{c.kind}:{c.error}" for c in self.errors())

    def error_details(self, limit: int = 5) -> list[str]:
        """The most common error messages, with counts (for a failure report)."""
        seen = Counter(f"{c.kind}: {c.error}: {c.detail}" for c in self.errors())
        return [f"{n} x {text}" for text, n in seen.most_common(limit)]

    def spans_fault(self) -> bool:
        """Requests succeeded before the fault, and requests sent after it succeeded too."""
        ok = [c for c in self.calls if c.ok]
        return any(c.started + c.latency < self.fault_started for c in ok) and any(
            c.started > self.fault_ended for c in ok
        )


def ledger_violations(report: RunReport) -> list[str]:
    """Money conserved, no acknowledged transfer lost or doubled, none invented."""
    ledger = report.ledger
    assert ledger is not None, "the run did not read the ledger back"
    problems = []
    if ledger.total != ledger.expected_total:
        problems.append(f"money not conserved: {ledger.total} != {ledger.expected_total}")
    if ledger.mismatched_accounts:
        problems.append(f"balances disagree with the ledger: accounts {ledger.mismatched_accounts}")
    stored = Counter(ledger.stored)
    doubled = sorted(tid for tid, n in stored.items() if n > 1)
    lost = report.transfers("committed") - stored.keys()
    failed_but_stored = report.transfers("failed") & stored.keys()
    sent = {c.transfer_id for c in report.calls if c.transfer_id is not None}
    invented = stored.keys() - sent
    for what, ids in (
        ("stored more than once", doubled),
        ("re-run after their commit (409 duplicate)", report.transfers("duplicate")),
        ("acknowledged but not stored", lost),
        ("reported failed but stored", failed_but_stored),
        ("stored but never sent", invented),
    ):
        if ids:
            problems.append(f"{len(ids)} transfer(s) {what}: {sorted(ids)[:3]}")
    return problems


def violations(report: RunReport) -> list[str]:
    """Every broken promise of a poolguard app in this run (empty when all held)."""
    problems = ledger_violations(report) + _slow(report) + _bare_errors(report)
    odd = [c for c in report.calls if c.status not in (200, 503)]
    if odd:
        kinds = Counter(f"HTTP {c.status} {c.kind}: {c.error}: {c.detail[:80]}" for c in odd)
        problems.append(f"{len(odd)} request(s) crashed or got no answer: {kinds.most_common(3)}")
    for kind in sorted(MUST_NOT_FAIL[report.fault]):
        failed = report.errors(kind)
        if failed:
            seen = Counter(c.error for c in failed).most_common(3)
            problems.append(f"{len(failed)} {kind} request(s) failed: {seen}")
    if not report.spans_fault():
        problems.append("no request succeeded before the fault, or none sent after it")
    return problems


def _slow(report: RunReport) -> list[str]:
    limit = report.deadline + LATENCY_GRACE
    slow = [c for c in report.calls if c.latency > limit]
    if not slow:
        return []
    worst = max(slow, key=lambda c: c.latency)
    return [
        f"{len(slow)} request(s) longer than deadline + {LATENCY_GRACE:.0f} s ({limit:.1f} s);"
        f" worst {worst.latency:.2f} s ({worst.kind}, {worst.error or 'ok'})"
    ]


def _bare_errors(report: RunReport) -> list[str]:
    """Driver errors that escaped poolguard as they were: not retried, and not saying why.

    A driver error poolguard gave up on after retrying carries its note ("poolguard: gave up
    after 3 attempts: ...") and is not bare.
    """
    bare = [c for c in report.errors() if c.status == 503 and "poolguard:" not in c.detail]
    bare = [c for c in bare if not c.error.startswith(POOLGUARD_ERRORS)]
    if not bare:
        return []
    seen = Counter(f"{c.kind}: {c.error}: {c.detail[:70]}" for c in bare).most_common(3)
    return [f"{len(bare)} request(s) failed with a bare driver error: {seen}"]


# --- serving the app ---------------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Any, *, startup_timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yield its base URL."""
    from poolguard.testing import free_port

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    stop_at = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > stop_at:
            server.should_exit = True
            raise RuntimeError("uvicorn did not start the app (its log says why)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


# --- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    transfer_id: str | None = None


def _plan(rng: random.Random, mode: str) -> _Request:
    """Next request of one client: 45 % reads, 25 % cached reads, 30 % transfers."""
    account = rng.randint(1, ACCOUNTS)
    draw = rng.random()
    if draw < 0.45:
        return _Request("read", "GET", f"/{mode}/accounts/{account}")
    if draw < 0.70:
        return _Request("cached", "GET", f"/{mode}/cached/accounts/{account}")
    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
    tid = uuid.uuid4().hex
    body = {"id": tid, "src": src, "dst": dst, "amount": rng.randint(1, 20)}
    return _Request("transfer", "POST", f"/{mode}/transfers", body, tid)


def _outcome(status: int, body: Any) -> str:
    if status == 200:
        return "committed"
    if isinstance(body, dict) and body.get("outcome") in ("unknown", "duplicate"):
        return str(body["outcome"])
    if status == 503 and isinstance(body, dict) and "error" in body:
        return "failed"  # the app says the unit of work was not applied
    return "unknown"  # no answer, or an unexpected one: it may or may not have happened


def _record(req: _Request, client: str, started: float, response: Any) -> Call:
    latency = time.monotonic() - started
    if isinstance(response, BaseException):
        status, body, error = 0, {"detail": str(response)}, type(response).__name__
    else:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        error = "" if status == 200 else str((body or {}).get("error", f"HTTP {status}"))
    outcome = _outcome(status, body) if req.transfer_id else ""
    detail = str((body or {}).get("detail", ""))[:400] if status != 200 else ""
    return Call(req.kind, client, started, latency, status, error, detail, req.transfer_id, outcome)


def _thread_client(base: str, mode: str, seed: int, stop: threading.Event, out: list[Call]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT) as client:
        while not stop.is_set():
            req = _plan(rng, mode)
            started = time.monotonic()
            try:
                response: Any = client.request(req.method, req.path, json=req.body)
            except httpx.HTTPError as exc:
                response = exc
            out.append(_record(req, "thread", started, response))
            time.sleep(PAUSE)


async def _task_client(
    base: str, mode: str, seed: int, stop: threading.Event, out: list[Call]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT) as client:
        while not stop.is_set():
            req = _plan(rng, mode)
            started = time.monotonic()
            try:
                response: Any = await client.request(req.method, req.path, json=req.body)
            except httpx.HTTPError as exc:
                response = exc
            out.append(_record(req, "task", started, response))
            await asyncio.sleep(PAUSE)


async def _task_clients(base: str, mode: str, stop: threading.Event, out: list[Call]) -> None:
    await asyncio.gather(
        *(_task_client(base, mode, 1000 + n, stop, out) for n in range(TASK_CLIENTS))
    )


@contextlib.contextmanager
def load(base: str, mode: str) -> Iterator[list[Call]]:
    """Client threads and asyncio tasks hitting ``base`` until the block ends; joins them all."""
    calls: list[Call] = []  # list.append is atomic: the clients share it without a lock
    stop = threading.Event()
    workers = [
        threading.Thread(target=_thread_client, args=(base, mode, n, stop, calls))
        for n in range(THREAD_CLIENTS)
    ]
    workers.append(
        threading.Thread(target=asyncio.run, args=(_task_clients(base, mode, stop, calls),))
    )
    for worker in workers:
        worker.start()
    try:
        yield calls
    finally:
        stop.set()
        for worker in workers:
            worker.join()


# --- one run -----------------------------------------------------------------------------------


def _plain_engine(database_url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(_psycopg_url(database_url), poolclass=NullPool)


def reset(database_url: str, redis_url: str) -> None:
    """Fresh tables, ACCOUNTS accounts of START_BALANCE each, an empty cache."""
    engine = _plain_engine(database_url)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all(Account(id=i, balance=START_BALANCE) for i in range(1, ACCOUNTS + 1))
    finally:
        engine.dispose()
    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()


def read_ledger(database_url: str) -> Ledger:
    engine = _plain_engine(database_url)
    try:
        with Session(engine) as session:
            accounts = session.execute(select(Account.id, Account.balance)).all()
            columns = (Transfer.id, Transfer.src, Transfer.dst, Transfer.amount)
            transfers = session.execute(select(*columns)).all()
            total = int(session.scalar(select(func.sum(Account.balance))) or 0)
    finally:
        engine.dispose()
    balances = {account: balance for account, balance in accounts}
    expected = dict.fromkeys(balances, START_BALANCE)
    for _tid, src, dst, amount in transfers:
        expected[src] -= amount
        expected[dst] += amount
    wrong = sorted(a for a in balances if balances[a] != expected[a])
    return Ledger(total, ACCOUNTS * START_BALANCE, wrong, [t[0] for t in transfers])


def _stats(stack: Stack | None) -> dict[str, Any]:
    """poolguard's counters for the run (the anchor has none)."""
    if stack is None:
        return {}
    out: dict[str, Any] = {}
    for name in ("engine", "aengine", "cache", "acache"):
        with contextlib.suppress(Exception):
            snap = poolguard.stats(getattr(stack, name))
            out[name] = {k: v for k, v in snap.items() if isinstance(v, int | float | str)}
    return out


def _until_ok(calls: list[Call], since: float) -> None:
    """Wait (at most SETTLE_MAX) until MIN_OK requests sent after ``since`` succeeded."""
    stop_at = time.monotonic() + SETTLE_MAX
    while time.monotonic() < stop_at:
        if sum(1 for c in list(calls) if c.ok and c.started > since) >= MIN_OK:
            return
        time.sleep(0.05)


def run(fault: str, mode: str, stack: str, pg: LocalServer, rds: LocalServer) -> RunReport:
    """The app on ``stack`` under load in ``mode`` while ``fault`` happens; the ledger after."""
    reset(pg.url, rds.url)
    deadline = DEADLINES.get(fault, DEADLINE)
    report = RunReport(fault, mode, stack, deadline)
    app = create_app(lambda: STACK_FACTORIES[stack](pg.url, rds.url), deadline=deadline)
    with serve(app) as base, load(base, mode) as calls:
        time.sleep(WARMUP)
        _until_ok(calls, since=0.0)
        report.fault_started = time.monotonic()
        FAULT_ACTIONS[fault](pg, rds)
        report.fault_ended = time.monotonic()
        time.sleep(COOLDOWN)
        _until_ok(calls, since=report.fault_ended)
        if stack == "poolguard":
            report.stats = _stats(getattr(app.state, "stack", None))
    report.calls = list(calls)
    report.ledger = read_ledger(pg.url)
    return report


# --- the table ---------------------------------------------------------------------------------


def row(report: RunReport) -> str:
    errors = "/".join(str(len(report.errors(k))) for k in ("read", "cached", "transfer"))
    problems = ledger_violations(report)
    ledger = "ok" if not problems else "BROKEN: " + "; ".join(problems)
    unknown = len(report.transfers("unknown"))
    if unknown:
        ledger += f" ({unknown} unknown)"
    return (
        f"{report.fault:<14} {report.mode:<6} {report.stack:<10} {len(report.calls):>8} "
        f"{len(report.errors()):>7} {errors:>14} {report.max_latency():>9.2f} s  {ledger}"
    )


HEADER = (
    f"{'fault':<14} {'mode':<6} {'stack':<10} {'requests':>8} {'errors':>7} "
    f"{'read/cach/xfer':>14} {'max lat.':>11}  ledger"
)


def _cell(report: RunReport | None) -> str:
    if report is None:
        return "— | — | —"
    split = "/".join(str(len(report.errors(k))) for k in ("read", "cached", "transfer"))
    return f"{len(report.calls)} | {len(report.errors())} ({split}) | {report.max_latency():.2f} s"


def markdown(reports: list[RunReport]) -> str:
    """Side by side per (fault, mode): requests, errors (read/cached/transfer), max latency."""
    by_key = {(r.fault, r.mode, r.stack): r for r in reports}
    lines = [
        "| fault | mode | poolguard requests | errors | max latency "
        "| anchor requests | errors | max latency |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for fault, mode in dict.fromkeys((r.fault, r.mode) for r in reports):
        poolguard_cell = _cell(by_key.get((fault, mode, "poolguard")))
        anchor_cell = _cell(by_key.get((fault, mode, "anchor")))
        lines.append(f"| {fault} | {mode} | {poolguard_cell} | {anchor_cell} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("-v", "--verbose", action="store_true", help="errors and stats per run")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args(argv)
    from poolguard.testing import PostgresServer, RedisServer

    reports = []
    with PostgresServer() as pg, RedisServer() as rds:
        print(HEADER, flush=True)
        for fault in args.faults.split(","):
            for mode in args.modes.split(","):
                for stack in args.stacks.split(","):
                    report = run(fault, mode, stack, pg, rds)
                    reports.append(report)
                    print(row(report), flush=True)
                    if args.verbose:
                        for line in report.error_details():
                            print(f"    {line}")
                        if stack == "poolguard":
                            print(f"    violations: {violations(report)}")
    if args.markdown:
        print(markdown(reports))
    broken = [r for r in reports if r.stack == "poolguard" and violations(r)]
    for report in broken:
        print(f"poolguard {report.fault}/{report.mode}: {violations(report)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
