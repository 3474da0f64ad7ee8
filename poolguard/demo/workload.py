"""The demo's workload: a tiny bank (reads, transfers in a transaction) and Redis counters.

The same code runs on both sides; only the :class:`Side` differs — its engine, its Redis client
and how it runs a unit of work. Every request is recorded as a :class:`Request` (when it
started, how long it took, what came back), so the scoreboard is computed from what callers
saw, never assumed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy
from redis.connection import parse_url
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import poolguard
import poolguard.redis
from poolguard.errors import AmbiguousResultError

__all__ = [
    "ACCOUNTS",
    "START_BALANCE",
    "Gate",
    "Request",
    "Side",
    "Workload",
    "poolguard_side",
    "vanilla_side",
]

ACCOUNTS = 8
START_BALANCE = 1000
PAUSE = 0.02  # each worker's think time between requests (s)
#: Server time of each read and transfer: real queries take a while, so a backend killed at a
#: random moment is sometimes killed mid-request, not only while idle in the pool (which
#: pool_pre_ping alone already handles).
QUERY_TIME = 0.03

Transact = Callable[["sessionmaker[Session]", Callable[[Session], None]], None]


@dataclass
class Side:
    """One stack under test: what the app would build, and how it runs a unit of work."""

    name: str  # "vanilla" or "poolguard"
    engine: sqlalchemy.Engine
    cache: redis.Redis
    transact: Transact
    deadline: float | None  # the per-request deadline poolguard enforces (None: no deadline)
    #: The server's sleep function: the workload runs on PostgreSQL or MariaDB.
    sleep_fn: str = "pg_sleep"
    sessions: sessionmaker[Session] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        self.cache.close()


def _plain_transact(sessions: sessionmaker[Session], fn: Callable[[Session], None]) -> None:
    with sessions.begin() as session:
        fn(session)


def driver_url(url: str) -> sqlalchemy.URL:
    """The URL with its driver named: psycopg for PostgreSQL, PyMySQL for MariaDB/MySQL."""
    parsed = sqlalchemy.make_url(url)
    driver = "mysql+pymysql" if parsed.get_backend_name() in ("mysql", "mariadb") else None
    return parsed.set(drivername=driver or "postgresql+psycopg")


def _sleep_fn(url: str) -> str:
    return "SLEEP" if driver_url(url).get_backend_name() == "mysql" else "pg_sleep"


def vanilla_side(database_url: str, redis_url: str, redis_timeout: float) -> Side:
    """Plain SQLAlchemy with ``pool_pre_ping=True`` and redis-py with its default retry.

    The Redis client gets the same socket timeout poolguard's has: without one a stalled
    server hangs it forever, which is no fairer a comparison. It is built as
    ``redis.Redis(host=...)``, whose default Retry (redis-py 8: 10 attempts on timeouts) is what
    most apps run with; ``from_url`` builds one without retries.
    """
    params: dict[str, Any] = parse_url(redis_url)  # type: ignore[no-untyped-call]
    return Side(
        name="vanilla",
        engine=sqlalchemy.create_engine(driver_url(database_url), pool_pre_ping=True),
        cache=redis.Redis(**params, socket_timeout=redis_timeout),
        transact=_plain_transact,
        deadline=None,
        sleep_fn=_sleep_fn(database_url),
    )


def _resolving_transact(sessions: sessionmaker[Session], fn: Callable[[Session], None]) -> None:
    poolguard.run_transaction(sessions, fn, resolve_ambiguous=True)


def _retrying_transact(sessions: sessionmaker[Session], fn: Callable[[Session], None]) -> None:
    poolguard.run_transaction(sessions, fn)


def poolguard_side(
    database_url: str, redis_url: str, sql: dict[str, str], cache: dict[str, str], deadline: float
) -> Side:
    """``poolguard.create_engine`` and ``poolguard.redis.from_url`` with the demo's settings."""
    # pg_xact_status is PostgreSQL's: on MariaDB a lost COMMIT reply stays ambiguous.
    resolves = driver_url(database_url).get_backend_name() == "postgresql"
    return Side(
        name="poolguard",
        engine=poolguard.create_engine(database_url, **sql),
        cache=poolguard.redis.from_url(redis_url, hooks=None, **cache),
        transact=_resolving_transact if resolves else _retrying_transact,
        deadline=deadline,
        sleep_fn=_sleep_fn(database_url),
    )


# --- the bank ----------------------------------------------------------------------------------


def reset_bank(admin: sqlalchemy.Engine) -> None:
    """Fresh tables: ACCOUNTS accounts with START_BALANCE each, an empty ledger."""
    # Plain SQL both PostgreSQL and MariaDB accept.
    with admin.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS demo_transfer, demo_account"))
        conn.execute(text("CREATE TABLE demo_account (id int PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(
            text("CREATE TABLE demo_transfer (id varchar(64) PRIMARY KEY, amount int NOT NULL)")
        )
        conn.execute(
            text("INSERT INTO demo_account VALUES (:id, :b)"),
            [{"id": n, "b": START_BALANCE} for n in range(1, ACCOUNTS + 1)],
        )


def _transfer(
    session: Session, tid: str, src: int, dst: int, amount: int, side: Side, gate: Gate | None
) -> None:
    """One unit of work (run_transaction may run it again: database work only)."""
    # Lock both rows in id order so opposite transfers queue instead of deadlocking.
    session.execute(
        text(
            f"SELECT id, {side.sleep_fn}(:q) FROM demo_account WHERE id IN (:a, :b) "
            "ORDER BY id FOR UPDATE"
        ),
        {"a": min(src, dst), "b": max(src, dst), "q": QUERY_TIME / 2},
    )
    if gate is not None:
        gate.hold_if_trapped()
    move = "UPDATE demo_account SET balance = balance + :d WHERE id = :id"
    session.execute(text(move), {"d": -amount, "id": src})
    session.execute(text(move), {"d": amount, "id": dst})
    session.execute(
        text("INSERT INTO demo_transfer VALUES (:id, :amount)"), {"id": tid, "amount": amount}
    )


#: A bound on the held transfer, should the fault thread die without releasing it.
HOLD_AT_MOST = 30.0


@dataclass
class Gate:
    """A lull in the traffic (the mysql-idle scenario): workers stop sending while it is shut.

    ``trap`` holds the next transfer open across the lull, after its first statement: a
    transaction waiting on something slow (an HTTP call, a user), idle inside the transaction.
    A retry of that transfer runs straight through: the trap is sprung once.
    """

    open: threading.Event = field(default_factory=threading.Event)
    trap: threading.Event = field(default_factory=threading.Event)
    trapped: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)  # the held one may go on

    def __post_init__(self) -> None:
        self.open.set()
        self.released.set()

    def hold_if_trapped(self) -> None:
        if self.trap.is_set():
            self.trap.clear()
            self.trapped.set()
            self.released.wait(HOLD_AT_MOST)


@dataclass(frozen=True)
class Request:
    """One request as the caller saw it."""

    kind: str  # "read", "transfer", "incr"
    t: float  # start, seconds since the side's run started
    latency: float
    outcome: str  # "ok", "error", "ambiguous" (may or may not have been applied), "hung"
    error: str = ""  # the exception's class name
    key: str = ""  # the transfer id or the Redis key, for the checks after the run


def _outcome(exc: BaseException) -> str:
    return "ambiguous" if isinstance(exc, AmbiguousResultError) else "error"


class Workload:
    """Worker threads running reads, transfers and INCRs on one side until stopped."""

    def __init__(
        self, side: Side, run_id: str, *, readers: int = 2, gate: Gate | None = None
    ) -> None:
        self.side = side
        self.gate = gate
        self.run_id = run_id
        self.requests: list[Request] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[int, tuple[str, float, str]] = {}
        kinds = ["read"] * readers + ["transfer", "incr"]
        self._threads = [
            threading.Thread(
                target=self._loop, args=(kind, n), daemon=True, name=f"demo-{kind}-{n}"
            )
            for n, kind in enumerate(kinds)
        ]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self, join_timeout: float) -> None:
        """Stop and join the workers; a request still running after ``join_timeout`` is "hung"."""
        self._stop.set()
        end = time.monotonic() + join_timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        now = time.monotonic()
        with self._lock:
            for kind, began, key in self._in_flight.values():
                self.requests.append(
                    Request(kind, began - self.started, now - began, "hung", "still waiting", key)
                )
            self._in_flight.clear()

    def counts(self) -> dict[str, int]:
        with self._lock:
            found = {"ok": 0, "error": 0, "ambiguous": 0}
            for r in self.requests:
                found[r.outcome] = found.get(r.outcome, 0) + 1
            return found

    def _loop(self, kind: str, n: int) -> None:
        rng = random.Random(n)
        op = {"read": self._read, "transfer": self._transfer, "incr": self._incr}[kind]
        while not self._stop.is_set():
            if self.gate is not None and not self.gate.open.wait(0.1):
                continue  # the lull: send nothing (stop still honoured)
            key = f"{self.run_id}:{self.side.name}:{uuid.uuid4().hex[:12]}"
            began = time.monotonic()
            with self._lock:
                self._in_flight[n] = (kind, began, key)
            try:
                self._call(op, rng, key)
            except Exception as exc:
                outcome, error = _outcome(exc), type(exc).__name__
            else:
                outcome, error = "ok", ""
            ended = time.monotonic()
            with self._lock:
                del self._in_flight[n]
                self.requests.append(
                    Request(kind, began - self.started, ended - began, outcome, error, key)
                )
            self._stop.wait(PAUSE)

    def _call(self, op: Callable[[random.Random, str], Any], rng: random.Random, key: str) -> None:
        if self.side.deadline is None:
            op(rng, key)
            return
        with poolguard.deadline(self.side.deadline):
            op(rng, key)

    def _read(self, rng: random.Random, key: str) -> None:
        with self.side.engine.connect() as conn:
            conn.execute(
                text(f"SELECT balance, {self.side.sleep_fn}(:q) FROM demo_account WHERE id = :id"),
                {"id": rng.randint(1, ACCOUNTS), "q": QUERY_TIME},
            ).one()

    def _transfer(self, rng: random.Random, key: str) -> None:
        src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
        amount = rng.randint(1, 20)
        self.side.transact(
            self.side.sessions,
            lambda s: _transfer(s, key, src, dst, amount, self.side, self.gate),
        )

    def _incr(self, rng: random.Random, key: str) -> None:
        self.side.cache.incr(key)
