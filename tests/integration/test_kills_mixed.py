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

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

import poolguard

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CALLERS = 3  # threads, and as many asyncio tasks, at the same time
RUN_FOR = 4.0
KILL_EVERY = 0.3
DEADLINE = 5.0
ACCOUNTS = 4
START_BALANCE = 1000


@dataclass
class Outcome:
    errors: dict[str, list[BaseException]] = field(
        default_factory=lambda: {"read": [], "write": [], "transfer": []}
    )
    acked: set[int] = field(default_factory=set)
    ambiguous: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, write_id: int | None, exc: BaseException | None) -> None:
        with self.lock:
            if exc is None:
                self.done += 1
                if write_id is not None:
                    self.acked.add(write_id)
                return
            self.errors[kind].append(exc)
            if write_id is not None:
                ambiguous = isinstance(exc, poolguard.AmbiguousResultError)
                (self.ambiguous if ambiguous else self.failed).add(write_id)


def _schema(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS mix_accounts"))
        conn.execute(text("DROP TABLE IF EXISTS mix_events"))
        conn.execute(text("CREATE TABLE mix_accounts (id int PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(text("CREATE TABLE mix_events (id int PRIMARY KEY)"))
        for i in range(ACCOUNTS):
            conn.execute(
                text("INSERT INTO mix_accounts VALUES (:i, :b)"), {"i": i, "b": START_BALANCE}
            )


_READ = text("SELECT sum(balance) FROM mix_accounts")
_WRITE = text("INSERT INTO mix_events (id) VALUES (:id)")
_DEBIT = text("UPDATE mix_accounts SET balance = balance - 1 WHERE id = :a")
_CREDIT = text("UPDATE mix_accounts SET balance = balance + 1 WHERE id = :b")


def _sync_caller(
    engine: Engine, kind_of: Callable[[], tuple[str, int]], out: Outcome, until: float, pg: bool
) -> None:
    Session = sessionmaker(engine)
    while time.monotonic() < until:
        kind, n = kind_of()
        write_id = n if kind == "write" else None
        try:
            with poolguard.deadline(DEADLINE):
                if kind == "read":
                    with engine.connect() as conn:
                        assert conn.execute(_READ).scalar() == ACCOUNTS * START_BALANCE
                elif kind == "write":
                    with engine.begin() as conn:
                        conn.execute(_WRITE, {"id": n})
                else:
                    a, b = n % ACCOUNTS, (n + 1) % ACCOUNTS

                    def unit(s: Any, a: int = a, b: int = b) -> None:
                        s.execute(_DEBIT, {"a": a})
                        s.execute(_CREDIT, {"b": b})

                    poolguard.run_transaction(Session, unit, resolve_ambiguous=pg)
        except Exception as exc:
            out.record(kind, write_id, exc)
        else:
            out.record(kind, write_id, None)


async def _async_caller(
    engine: AsyncEngine,
    kind_of: Callable[[], tuple[str, int]],
    out: Outcome,
    until: float,
    pg: bool,
) -> None:
    Session = async_sessionmaker(engine)
    while time.monotonic() < until:
        kind, n = kind_of()
        write_id = n if kind == "write" else None
        try:
            async with poolguard.deadline(DEADLINE):
                if kind == "read":
                    async with engine.connect() as conn:
                        total = (await conn.execute(_READ)).scalar()
                        assert total == ACCOUNTS * START_BALANCE
                elif kind == "write":
                    async with engine.begin() as conn:
                        await conn.execute(_WRITE, {"id": n})
                else:
                    a, b = n % ACCOUNTS, (n + 1) % ACCOUNTS

                    async def unit(s: Any, a: int = a, b: int = b) -> None:
                        await s.execute(_DEBIT, {"a": a})
                        await s.execute(_CREDIT, {"b": b})

                    await poolguard.run_transaction_async(Session, unit, resolve_ambiguous=pg)
        except Exception as exc:
            out.record(kind, write_id, exc)
        else:
            out.record(kind, write_id, None)
        await asyncio.sleep(0)


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
    _schema(engine)
    counter = itertools.count(1)
    kinds = ("read", "write", "transfer")

    def kind_of() -> tuple[str, int]:
        n = next(counter)
        return kinds[n % 3], n

    out = Outcome()
    until = time.monotonic() + RUN_FOR
    stop_killing = threading.Event()
    kills = [0]

    def killer() -> None:
        while not stop_killing.wait(KILL_EVERY):
            kills[0] += server.kill_connections()

    threads = [threading.Thread(target=killer)] + [
        threading.Thread(target=_sync_caller, args=(engine, kind_of, out, until, pg))
        for _ in range(CALLERS)
    ]
    for t in threads:
        t.start()
    try:
        await asyncio.gather(
            *(_async_caller(aengine, kind_of, out, until, pg) for _ in range(CALLERS))
        )
    finally:
        for t in threads[1:]:
            t.join(DEADLINE * 4)
        stop_killing.set()
        threads[0].join(10)

    counts = {k: len(v) for k, v in out.errors.items()}
    print(f"\n{kind}: kills={kills[0]} done={out.done} errors={counts}", len(out.ambiguous))
    assert kills[0] >= 5
    assert out.done > 50
    assert out.errors["read"] == []
    transfer_errors = [e for e in out.errors["transfer"] if not _ambiguous(e) or pg]
    assert transfer_errors == []
    with engine.connect() as conn:
        assert conn.execute(_READ).scalar() == ACCOUNTS * START_BALANCE  # money conserved
        present = {row[0] for row in conn.execute(text("SELECT id FROM mix_events"))}
    assert out.acked <= present  # no acknowledged write lost (and the key forbids doubles)
    assert present <= out.acked | out.ambiguous  # a write that failed plainly was not applied
    for exc in out.errors["write"]:  # what a killed write may surface, and nothing else
        assert isinstance(exc, (poolguard.AmbiguousResultError, _dropin_operational())), exc


def _ambiguous(exc: BaseException) -> bool:
    return isinstance(exc, poolguard.AmbiguousResultError)


def _dropin_operational() -> type[BaseException]:
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError
