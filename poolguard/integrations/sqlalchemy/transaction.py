"""``run_transaction`` / ``run_transaction_async``: re-run a whole unit of work when it is safe.

The unit ``fn(session)`` runs inside one transaction. It is re-run from the start, on a fresh
connection, when the server definitively rolled it back (serialization failure 40001, deadlock
40P01, lock timeout 55P03; MySQL deadlock 1213, lock wait timeout 1205 — configurable with
``retry_on``) or when the connection died *before* the COMMIT was
sent (the server rolls an unfinished transaction back). It is never re-run when the COMMIT
itself was sent and its reply was lost: that raises :class:`~poolguard.AmbiguousResultError`
(also a ``sqlalchemy.exc.OperationalError``), unless ``resolve_ambiguous=True``:

    poolguard records ``txid_current()`` and ``pg_backend_pid()`` just before COMMIT; after a
    lost reply it asks a fresh connection for ``pg_xact_status(xid)``. ``committed`` → return
    normally; ``aborted`` → re-run; ``in progress`` (the COMMIT never arrived and the old backend
    still holds the transaction open) → ``pg_terminate_backend(pid)`` makes it ``aborted``.
    This needs PostgreSQL >= 13 and costs one round trip per attempt (the xid query). The
    server's timeline is recorded with the xid: a resolving server on another timeline (a
    failover in between) cannot be trusted with that xid, and the outcome stays ambiguous.
    MySQL and MariaDB have no equivalent: ``resolve_ambiguous=True`` raises ConfigError there.

Everything runs under the engine's Guard (deadline, retry budget, breaker; backoff between
attempts), with ``Operation(unit_of_work=True)``. A single statement is retried by ``connection.py``
instead; the native pools' ``transaction()`` (``psycopg_pool/``) follows the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from poolguard.core.disposition import Classification, Disposition, Operation, Position
from poolguard.core.retry import Guard
from poolguard.errors import AmbiguousResultError, PoolguardError
from poolguard.integrations.sqlalchemy._errors import as_dropin
from poolguard.integrations.sqlalchemy._state import EngineState
from poolguard.integrations.sqlalchemy.engine import guard_of

__all__ = ["DEFAULT_RETRY_SQLSTATES", "run_transaction", "run_transaction_async"]

T = TypeVar("T")

#: PostgreSQL's default ``retry_on`` (MySQL engines default to their errnos, "1213", "1205").
DEFAULT_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
RetryOn = Collection[str | int] | None
UNIT_OF_WORK = Operation(Position.LATER, unit_of_work=True)

#: The server's timeline (the first 8 hex digits of its WAL file name), recorded with the xid
#: and compared at resolution: after a failover the promoted server is on a new timeline, and
#: there pg_xact_status may answer for *another* transaction given the same xid (the lost
#: one's WAL never reached the standby), and the recorded pid is someone else's backend. A
#: different timeline leaves the outcome ambiguous.
_TIMELINE = "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
_XID_SQL = text(f"SELECT txid_current(), pg_backend_pid(), {_TIMELINE}")
#: The xid is sent as text: asyncpg binds the parameter with the type the server infers
#: (text here) and refuses an int for it.
_STATUS_SQL = text(f"SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8)), {_TIMELINE}")
_TERMINATE_SQL = text("SELECT pg_terminate_backend(:pid)")
#: Pause between pg_xact_status polls while the old backend goes away.
RESOLVE_POLL = 0.05
#: Give up resolving after this long (also bounded by the caller's deadline).
RESOLVE_TIMEOUT = 5.0


class _CommitAborted(Exception):
    """Resolution found the lost COMMIT's transaction aborted: the unit may run again."""


def _unit_guard(state: EngineState, retry_on: RetryOn, attempts: int | None) -> Guard:
    """The engine's Guard, seen through this call's retryable codes and attempt count."""
    backend = state.backend
    allowed = backend.retry_codes if retry_on is None else frozenset(str(code) for code in retry_on)
    key = (allowed, attempts)
    cached = state._uow_guards.get(key)
    if cached is not None:
        return cached
    base = state.guard

    def classify(exc: BaseException) -> Classification:
        if isinstance(exc, _CommitAborted):
            return Classification(Disposition.RETRY_TRANSACTION, "commit_lost_aborted")
        c = backend.classify(exc)
        if (
            c.disposition is Disposition.RETRY_TRANSACTION
            and backend.error_code(exc) not in allowed
        ):
            return Classification(Disposition.FAIL, c.reason)
        return c

    guard = base.derive(classify, attempts=attempts)
    state._uow_guards[key] = guard
    return guard


# --- sync ------------------------------------------------------------------------------------


def run_transaction(
    target: sessionmaker[Any] | Session | Engine,
    fn: Callable[[Any], T],
    *,
    retry_on: RetryOn = None,
    resolve_ambiguous: bool = False,
    attempts: int | None = None,
) -> T:
    """Run ``fn(session)`` (or ``fn(connection)`` for an Engine) in one transaction, re-running
    the whole unit when that is safe; return what ``fn`` returned for the committed attempt.

    ``retry_on``: the error codes that re-run the unit (SQLSTATEs for PostgreSQL, errnos for
    MySQL, e.g. ``{"1213"}``); default: the backend's (see the module docstring).

    ``fn`` may run more than once: keep side effects outside the database out of it.
    """
    engine = _engine_of(target)
    state = guard_of(engine)
    if resolve_ambiguous:
        state.backend.check_resolve()
    guard = _unit_guard(state, retry_on, attempts)

    def attempt(_attempts: Any) -> T:
        if isinstance(target, Engine):
            with target.connect() as conn:
                return _run_once(conn, fn, conn, state, resolve_ambiguous)
        if isinstance(target, Session):
            return _run_once(target, fn, engine, state, resolve_ambiguous)
        with target() as session:
            return _run_once(session, fn, engine, state, resolve_ambiguous)

    try:
        return guard.run_with(attempt, UNIT_OF_WORK, sleep=state.sleep)
    except PoolguardError as exc:
        raise as_dropin(exc) from exc.__cause__ or exc


def _run_once(
    unit: Session | Connection,
    fn: Callable[[Any], T],
    resolver: Engine | Connection,
    state: EngineState,
    resolve: bool,
) -> T:
    if unit.in_transaction():
        raise RuntimeError("run_transaction needs a session/connection with no open transaction")
    unit.begin()
    try:
        result = fn(unit)
        marker = None
        if resolve:
            if isinstance(unit, Session):
                unit.flush()
            marker = tuple(unit.execute(_XID_SQL).one())
        try:
            unit.commit()
        except AmbiguousResultError as exc:
            if marker is None:
                raise
            if unit.in_transaction():
                unit.rollback()  # forget the dead transaction's client-side state
            engine = resolver.engine if isinstance(resolver, Connection) else resolver
            if _resolve(engine, state, marker, exc):
                return result
            raise _CommitAborted("the lost COMMIT was not applied") from exc
        return result
    except BaseException:
        if unit.in_transaction():
            unit.rollback()
        raise


def _resolve(
    engine: Engine, state: EngineState, marker: tuple[Any, ...], exc: BaseException
) -> bool:
    """True if the transaction committed, False if aborted; re-raise ``exc`` if unknowable."""
    xid, pid, timeline = marker
    stop = time.monotonic() + RESOLVE_TIMEOUT
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while time.monotonic() < stop:
                status, now_on = conn.execute(_STATUS_SQL, {"xid": str(xid)}).one()
                _same_timeline(state, timeline, now_on)
                if status in ("committed", "aborted"):
                    state.guard.stats.incr(f"ambiguous_resolved.{status}")
                    return bool(status == "committed")
                conn.execute(_TERMINATE_SQL, {"pid": pid})
                state.sleep(RESOLVE_POLL)
    except Exception:
        raise exc from exc.__cause__  # unknowable: stay ambiguous (the check error is context)
    raise exc


class _OtherTimeline(Exception):
    """The resolving server is not on the timeline the COMMIT was sent on (a failover)."""


def _same_timeline(state: EngineState, recorded: object, current: object) -> None:
    if recorded != current:
        state.guard.stats.incr("ambiguous_unresolved.timeline")
        raise _OtherTimeline(f"timeline {current} is not {recorded}: a failover in between")


def _engine_of(target: Any) -> Engine:
    if isinstance(target, Engine):
        return target
    if isinstance(target, Session):
        bind = target.get_bind()
        return bind if isinstance(bind, Engine) else bind.engine
    if isinstance(target, sessionmaker):
        maker_bind = target.kw.get("bind")
        if isinstance(maker_bind, Engine):
            return maker_bind
        if isinstance(maker_bind, Connection):
            return maker_bind.engine
    raise TypeError(
        "run_transaction needs a sessionmaker or Session bound to a poolguard engine, or the"
        f" engine itself; got {type(target).__name__}"
    )


# --- async -----------------------------------------------------------------------------------


async def run_transaction_async(
    target: async_sessionmaker[Any] | AsyncSession,
    afn: Callable[[AsyncSession], Awaitable[T]],
    *,
    retry_on: RetryOn = None,
    resolve_ambiguous: bool = False,
    attempts: int | None = None,
) -> T:
    """The asyncio twin of :func:`run_transaction` for ``async_sessionmaker``/``AsyncSession``."""
    engine = _async_engine_of(target)
    state = guard_of(engine)
    if resolve_ambiguous:
        state.backend.check_resolve()
    guard = _unit_guard(state, retry_on, attempts)

    async def attempt(_attempts: Any) -> T:
        if isinstance(target, AsyncSession):
            return await _arun_once(target, afn, engine, state, resolve_ambiguous)
        async with target() as session:
            return await _arun_once(session, afn, engine, state, resolve_ambiguous)

    try:
        return await guard.arun_with(attempt, UNIT_OF_WORK)
    except PoolguardError as exc:
        raise as_dropin(exc) from exc.__cause__ or exc


async def _arun_once(
    session: AsyncSession,
    afn: Callable[[AsyncSession], Awaitable[T]],
    engine: AsyncEngine,
    state: EngineState,
    resolve: bool,
) -> T:
    if session.in_transaction():
        raise RuntimeError("run_transaction_async needs a session with no open transaction")
    await session.begin()
    try:
        result = await afn(session)
        marker = None
        if resolve:
            await session.flush()
            marker = tuple((await session.execute(_XID_SQL)).one())
        try:
            await session.commit()
        except AmbiguousResultError as exc:
            if marker is None:
                raise
            if session.in_transaction():
                await session.rollback()  # forget the dead transaction's client-side state
            if await _aresolve(engine, state, marker, exc):
                return result
            raise _CommitAborted("the lost COMMIT was not applied") from exc
        return result
    except BaseException:
        if session.in_transaction():
            await session.rollback()
        raise


async def _aresolve(
    engine: AsyncEngine, state: EngineState, marker: tuple[Any, ...], exc: BaseException
) -> bool:
    import asyncio

    xid, pid, timeline = marker
    stop = time.monotonic() + RESOLVE_TIMEOUT
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            while time.monotonic() < stop:
                status, now_on = (await conn.execute(_STATUS_SQL, {"xid": str(xid)})).one()
                _same_timeline(state, timeline, now_on)
                if status in ("committed", "aborted"):
                    state.guard.stats.incr(f"ambiguous_resolved.{status}")
                    return bool(status == "committed")
                await conn.execute(_TERMINATE_SQL, {"pid": pid})
                await asyncio.sleep(RESOLVE_POLL)
    except Exception:
        raise exc from exc.__cause__  # unknowable: stay ambiguous (the check error is context)
    raise exc


def _async_engine_of(target: Any) -> AsyncEngine:
    if isinstance(target, AsyncSession):
        bind = target.bind
    elif isinstance(target, async_sessionmaker):
        bind = target.kw.get("bind")
    else:
        bind = None
    if isinstance(bind, AsyncEngine):
        return bind
    raise TypeError(
        "run_transaction_async needs an async_sessionmaker or AsyncSession bound to a"
        f" poolguard async engine; got {type(target).__name__}"
    )
