"""A web app's mix of work under a fault, from threads and asyncio tasks at once: the harness.

Sync callers (threads) and async callers (tasks) run reads, plain writes (a lone INSERT in its
own transaction) and ``run_transaction`` units (``unit``: a unique insert; ``transfer``: a
ledger transfer between two accounts), each under ``poolguard.deadline``, while the test's
fault function runs in a thread; the callers stop when it returns. Afterwards the test checks
what :meth:`MixedLoad.check_final` checks (money conserved; every acknowledged insert present
exactly once; a failed one absent) plus its own invariants.

Test files import it as ``from mixed_load import ...``: ``tests/integration`` has no
``__init__.py``, so pytest puts it on ``sys.path`` for every test file under it (the same way
the redis tests import ``redis_helpers``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

import poolguard

ACCOUNTS = 4
START = 1000
INSERTS = ("write", "unit")  # the kinds that insert a row with the operation's number
Step = tuple[TextClause, dict[str, Any]]


@dataclass
class Outcome:
    """What the callers saw, by kind; insert numbers split by how their operation ended."""

    errors: dict[str, list[BaseException]] = field(
        default_factory=lambda: {k: [] for k in ("read", "write", "unit", "transfer")}
    )
    acked: set[int] = field(default_factory=set)
    ambiguous: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    ok_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, n: int, exc: BaseException | None) -> None:
        with self.lock:
            if exc is None:
                self.ok_times.append(time.monotonic())
                if kind in INSERTS:
                    self.acked.add(n)
                return
            self.errors[kind].append(exc)
            if kind in INSERTS:
                ambiguous = isinstance(exc, poolguard.AmbiguousResultError)
                (self.ambiguous if ambiguous else self.failed).add(n)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.errors.items()}

    def longest_gap(self) -> float:
        """Reported, never asserted (no wall-clock thresholds): the recovery time callers saw."""
        ordered = sorted(self.ok_times)
        return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def _check_total(row: Row[Any]) -> None:
    assert row[0] == ACCOUNTS * START


@dataclass
class MixedLoad:
    """Tables ``<prefix>_accounts`` and ``<prefix>_events``; one operation kind per number."""

    engine: Engine
    aengine: AsyncEngine
    prefix: str
    kinds: tuple[str, ...] = ("read", "write", "unit", "transfer", "read")
    deadline: float = 10.0
    callers: int = 3  # threads, and as many asyncio tasks
    pause: float = 0.005  # between a caller's operations
    resolve_ambiguous: bool = False
    read: TextClause | None = None  # default: the sum of the balances
    check_read: Callable[[Row[Any]], None] = _check_total
    prelude: Callable[[int], Step] | None = None  # run first in every unit
    out: Outcome = field(default_factory=Outcome)

    def __post_init__(self) -> None:
        self.total = text(f"SELECT sum(balance) FROM {self.prefix}_accounts")
        self._read = self.read if self.read is not None else self.total
        self._insert = text(f"INSERT INTO {self.prefix}_events (id, kind) VALUES (:id, :kind)")
        self._debit = text(f"UPDATE {self.prefix}_accounts SET balance = balance - 1 WHERE id = :a")
        self._credit = text(
            f"UPDATE {self.prefix}_accounts SET balance = balance + 1 WHERE id = :b"
        )
        self._counter = itertools.count(1)
        self._counter_lock = threading.Lock()

    def create_schema(self) -> None:
        p = self.prefix
        with self.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {p}_accounts, {p}_events"))
            conn.execute(text(f"CREATE TABLE {p}_accounts (id int PRIMARY KEY, balance int)"))
            # No unique key on purpose: an insert applied twice must show up, not fail.
            conn.execute(
                text(f"CREATE TABLE {p}_events (id int NOT NULL, kind varchar(8) NOT NULL)")
            )
            for i in range(ACCOUNTS):
                conn.execute(
                    text(f"INSERT INTO {p}_accounts VALUES (:i, :b)"), {"i": i, "b": START}
                )

    def _next_op(self) -> tuple[str, int]:
        with self._counter_lock:
            n = next(self._counter)
        return self.kinds[n % len(self.kinds)], n

    def _unit_steps(self, kind: str, n: int) -> list[Step]:
        """A unit's statements, the same for the sync and the async caller."""
        steps = [self.prelude(n)] if self.prelude is not None else []
        if kind == "unit":
            return [*steps, (self._insert, {"id": n, "kind": kind})]
        return [
            *steps,
            (self._debit, {"a": n % ACCOUNTS}),
            (self._credit, {"b": (n + 1) % ACCOUNTS}),
        ]

    def _sync_op(self, Session: sessionmaker[Any], kind: str, n: int) -> None:
        if kind == "read":
            with self.engine.connect() as conn:
                self.check_read(conn.execute(self._read).one())
        elif kind == "write":
            with self.engine.begin() as conn:
                conn.execute(self._insert, {"id": n, "kind": kind})
        else:
            steps = self._unit_steps(kind, n)

            def unit(s: Any) -> None:
                for statement, params in steps:
                    s.execute(statement, params)

            poolguard.run_transaction(Session, unit, resolve_ambiguous=self.resolve_ambiguous)

    async def _async_op(self, Session: async_sessionmaker[Any], kind: str, n: int) -> None:
        if kind == "read":
            async with self.aengine.connect() as conn:
                self.check_read((await conn.execute(self._read)).one())
        elif kind == "write":
            async with self.aengine.begin() as conn:
                await conn.execute(self._insert, {"id": n, "kind": kind})
        else:
            steps = self._unit_steps(kind, n)

            async def unit(s: Any) -> None:
                for statement, params in steps:
                    await s.execute(statement, params)

            await poolguard.run_transaction_async(
                Session, unit, resolve_ambiguous=self.resolve_ambiguous
            )

    def _sync_caller(self, stop: threading.Event) -> None:
        Session = sessionmaker(self.engine)
        while not stop.is_set():
            kind, n = self._next_op()
            try:
                with poolguard.deadline(self.deadline):
                    self._sync_op(Session, kind, n)
            except Exception as exc:
                self.out.record(kind, n, exc)
            else:
                self.out.record(kind, n, None)
            time.sleep(self.pause)

    async def _async_caller(self, stop: threading.Event) -> None:
        Session = async_sessionmaker(self.aengine)
        while not stop.is_set():
            kind, n = self._next_op()
            try:
                async with poolguard.deadline(self.deadline):
                    await self._async_op(Session, kind, n)
            except Exception as exc:
                self.out.record(kind, n, exc)
            else:
                self.out.record(kind, n, None)
            await asyncio.sleep(self.pause)

    async def run(self, fault: Callable[[], None]) -> Outcome:
        """Run the callers until ``fault`` (its own timing included) returns; re-raise its error."""
        stop = threading.Event()
        fault_errors: list[BaseException] = []

        def run_fault() -> None:
            try:
                fault()
            except BaseException as exc:  # re-raised below, in the test
                fault_errors.append(exc)
            finally:
                stop.set()

        threads = [threading.Thread(target=run_fault)] + [
            threading.Thread(target=self._sync_caller, args=(stop,)) for _ in range(self.callers)
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.gather(*(self._async_caller(stop) for _ in range(self.callers)))
        finally:
            for t in threads:
                t.join(self.deadline * 4)
        if fault_errors:
            raise fault_errors[0]
        return self.out

    def check_final(self, conn: Connection, *, ambiguous_may_apply: bool = True) -> set[int]:
        """Money conserved; acknowledged inserts present exactly once, failed ones absent.

        Returns the numbers of the inserts present. With ``ambiguous_may_apply=False`` an
        insert that failed ambiguously must be absent too.
        """
        assert conn.execute(self.total).scalar() == ACCOUNTS * START, "money not conserved"
        rows = conn.execute(text(f"SELECT id, count(*) FROM {self.prefix}_events GROUP BY id"))
        present = {int(i): int(c) for i, c in rows.all()}
        assert {i for i, c in present.items() if c > 1} == set(), "an insert was applied twice"
        assert self.out.acked <= present.keys(), "an acknowledged insert is missing"
        failed = self.out.failed if ambiguous_may_apply else self.out.failed | self.out.ambiguous
        assert failed.isdisjoint(present), "a failed (not ambiguous) insert was applied"
        return set(present)
