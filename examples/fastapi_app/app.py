"""A small bank on FastAPI and poolguard: ORM reads, money transfers, a Redis cache; sync and async.

    DATABASE_URL=postgres://app:secret@localhost/app REDIS_URL=redis://localhost:6379/0 \
    uvicorn --app-dir examples fastapi_app.app:app

Every endpoint exists twice, as a plain ``def`` (FastAPI runs it in its thread pool, on the sync
engine and ``redis.Redis``) and as an ``async def`` (on the async engine and ``redis.asyncio``):

    GET  /{sync,async}/accounts/{id}          ORM read of one account
    GET  /{sync,async}/cached/accounts/{id}   the same through a Redis read-through cache
    POST /{sync,async}/transfers              {"id", "src", "dst", "amount"} in run_transaction
    GET  /async/audit                         total money and number of transfers

Each request runs under one ``poolguard.deadline`` (``APP_DEADLINE``, default 5 s): retries,
reconnects and waits for a pool slot all fit in it. Errors the backends could not hide become a
503 with the error's class name; a transfer whose COMMIT reply was lost and could not be
resolved answers 503 with ``"outcome": "unknown"`` (the client must look the id up, not resend);
a transfer id already in the ledger answers 409 (``"outcome": "duplicate"``).

The app talks to its backends through a :class:`Stack`; :func:`poolguard_stack` is the real one.
``chaos.py`` builds a second one from plain SQLAlchemy and redis-py to compare the two.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine, ForeignKey, String, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import poolguard
import poolguard.redis
from poolguard.web import ASGIDeadlineMiddleware

#: One request's whole budget, retries included (seconds).
DEADLINE = float(os.environ.get("APP_DEADLINE", "5"))
#: How stale a cached balance may be (seconds).
CACHE_TTL = int(os.environ.get("APP_CACHE_TTL", "5"))
#: Accounts created (with START_BALANCE each) when the table is empty at startup.
SEED_ACCOUNTS = int(os.environ.get("APP_ACCOUNTS", "10"))
START_BALANCE = 1000

log = logging.getLogger("fastapi_app")


# --- the model ---------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Transfer(Base):
    """The ledger: the client's transfer id is the primary key, so no transfer lands twice."""

    __tablename__ = "transfers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    src: Mapped[int] = mapped_column(ForeignKey(Account.id))
    dst: Mapped[int] = mapped_column(ForeignKey(Account.id))
    amount: Mapped[int]


class TransferIn(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    src: int
    dst: int
    amount: int = Field(gt=0)


def _lock_pair(t: TransferIn) -> Any:
    # Lock both rows in id order: two opposite transfers then queue instead of deadlocking.
    pair = sorted((t.src, t.dst))
    return select(Account).where(Account.id.in_(pair)).order_by(Account.id).with_for_update()


def _apply(accounts: dict[int, Account], session: Session | AsyncSession, t: TransferIn) -> None:
    if t.src == t.dst or len(accounts) != 2:
        raise HTTPException(404, "unknown account (or src == dst)")
    accounts[t.src].balance -= t.amount
    accounts[t.dst].balance += t.amount
    session.add(Transfer(id=t.id, src=t.src, dst=t.dst, amount=t.amount))


def transfer(session: Session, t: TransferIn) -> None:
    """One unit of work. run_transaction may run it more than once: database work only."""
    _apply({a.id: a for a in session.scalars(_lock_pair(t))}, session, t)


async def atransfer(session: AsyncSession, t: TransferIn) -> None:
    _apply({a.id: a for a in await session.scalars(_lock_pair(t))}, session, t)


# --- what the app talks to -------------------------------------------------------------------

Transact = Callable[[sessionmaker[Session], Callable[[Session], None]], None]
ATransact = Callable[
    [async_sessionmaker[AsyncSession], Callable[[AsyncSession], Awaitable[None]]],
    Awaitable[None],
]


@dataclass
class Stack:
    """The app's engines, Redis clients and the way it runs a unit of work."""

    engine: Engine
    aengine: AsyncEngine
    cache: redis.Redis
    acache: redis.asyncio.Redis
    transact: Transact
    atransact: ATransact
    sessions: sessionmaker[Session] = field(init=False)
    asessions: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = sessionmaker(self.engine)
        self.asessions = async_sessionmaker(self.aengine, expire_on_commit=False)

    async def close(self) -> None:
        self.engine.dispose()
        await self.aengine.dispose()
        self.cache.close()
        await self.acache.aclose()


def poolguard_stack(database_url: str | None = None, redis_url: str | None = None) -> Stack:
    """The app's real backends: URLs and every ``POOLGUARD_*`` setting from the environment."""
    return Stack(
        engine=poolguard.create_engine(database_url),
        aengine=poolguard.create_async_engine(database_url),
        cache=poolguard.redis.from_url(redis_url, decode_responses=True),
        acache=poolguard.redis.async_from_url(redis_url, decode_responses=True),
        # PostgreSQL can say whether a COMMIT whose reply was lost was applied: ask it, so a
        # transfer ends committed or not committed instead of "unknown" (AmbiguousResultError).
        transact=functools.partial(poolguard.run_transaction, resolve_ambiguous=True),
        atransact=functools.partial(poolguard.run_transaction_async, resolve_ambiguous=True),
    )


def seed(engine: Engine, accounts: int = SEED_ACCOUNTS) -> None:
    """Create the tables; give ``accounts`` accounts START_BALANCE each if there are none."""
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        if not session.scalar(select(func.count()).select_from(Account)):
            session.add_all(Account(id=i, balance=START_BALANCE) for i in range(1, accounts + 1))


# --- the web layer -----------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """poolguard's notes (how many attempts, why it gave up) and the message's first line."""
    notes = [str(note) for note in getattr(exc, "__notes__", ())]
    return " | ".join([*notes, *str(exc).splitlines()[:1]])[:400]


def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A backend error poolguard could not hide (or plain libraries did not): 503, no secrets."""
    log.warning("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": type(exc).__name__, "detail": describe(exc)}, status_code=503)


def ambiguous(request: Request, exc: Exception) -> JSONResponse:
    """The COMMIT may or may not have been applied: the client must check, never resend blindly."""
    log.error("%s %s: outcome unknown", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": type(exc).__name__, "outcome": "unknown", "detail": describe(exc)},
        status_code=503,
    )


def crashed(request: Request, exc: Exception) -> JSONResponse:
    """Anything else is a bug (here or below): 500, logged with its traceback."""
    log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": type(exc).__name__, "detail": describe(exc)}, status_code=500)


def duplicate(request: Request, exc: Exception) -> JSONResponse:
    """The transfer id is already in the ledger: it was applied before, not again."""
    return JSONResponse(
        {"error": type(exc).__name__, "outcome": "duplicate", "detail": "transfer id exists"},
        status_code=409,
    )


def create_app(
    make_stack: Callable[[], Stack] = poolguard_stack, *, deadline: float = DEADLINE
) -> FastAPI:
    """The app; ``make_stack`` runs at startup, inside the server's event loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stack = make_stack()
        seed(stack.engine)
        app.state.stack = stack
        try:
            yield
        finally:
            await stack.close()

    app = FastAPI(title="poolguard bank", lifespan=lifespan)
    # Every HTTP request under poolguard.deadline(deadline): it reaches ``async def`` endpoints
    # directly and ``def`` endpoints through the thread pool (the context is copied there).
    app.add_middleware(ASGIDeadlineMiddleware, seconds=deadline)
    # AmbiguousResultError is also an OperationalError: the more specific handler wins.
    app.add_exception_handler(poolguard.AmbiguousResultError, ambiguous)
    app.add_exception_handler(IntegrityError, duplicate)
    app.add_exception_handler(Exception, crashed)
    for error in (poolguard.PoolguardError, SQLAlchemyError, redis.exceptions.RedisError):
        app.add_exception_handler(error, unavailable)
    app.include_router(_sync_routes())
    app.include_router(_async_routes())
    return app


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


def _account(account: Account | None) -> dict[str, int]:
    if account is None:
        raise HTTPException(404, "no such account")
    return {"id": account.id, "balance": account.balance}


def _sync_routes() -> APIRouter:
    router = APIRouter(prefix="/sync")

    @router.get("/accounts/{account_id}")
    def read_account(account_id: int, request: Request) -> dict[str, int]:
        with _stack(request).sessions() as session:
            return _account(session.get(Account, account_id))

    @router.get("/cached/accounts/{account_id}")
    def cached_account(account_id: int, request: Request) -> dict[str, Any]:
        cache, key = _stack(request).cache, f"account:{account_id}:balance"
        hit = cache.get(key)
        if hit is not None:
            return {"id": account_id, "balance": int(hit), "cached": True}
        account = read_account(account_id, request)
        cache.set(key, account["balance"], ex=CACHE_TTL)
        return {**account, "cached": False}

    @router.post("/transfers")
    def create_transfer(t: TransferIn, request: Request) -> dict[str, str]:
        stack = _stack(request)
        stack.transact(stack.sessions, functools.partial(transfer, t=t))
        return {"id": t.id, "outcome": "committed"}

    return router


def _async_routes() -> APIRouter:
    router = APIRouter(prefix="/async")

    @router.get("/accounts/{account_id}")
    async def read_account(account_id: int, request: Request) -> dict[str, int]:
        async with _stack(request).asessions() as session:
            return _account(await session.get(Account, account_id))

    @router.get("/cached/accounts/{account_id}")
    async def cached_account(account_id: int, request: Request) -> dict[str, Any]:
        cache, key = _stack(request).acache, f"account:{account_id}:balance"
        hit = await cache.get(key)
        if hit is not None:
            return {"id": account_id, "balance": int(hit), "cached": True}
        account = await read_account(account_id, request)
        await cache.set(key, account["balance"], ex=CACHE_TTL)
        return {**account, "cached": False}

    @router.post("/transfers")
    async def create_transfer(t: TransferIn, request: Request) -> dict[str, str]:
        stack = _stack(request)
        await stack.atransact(stack.asessions, functools.partial(atransfer, t=t))
        return {"id": t.id, "outcome": "committed"}

    @router.get("/audit")
    async def audit(request: Request) -> dict[str, int]:
        async with _stack(request).asessions() as session:
            total = await session.scalar(select(func.coalesce(func.sum(Account.balance), 0)))
            count = await session.scalar(select(func.count()).select_from(Transfer))
        return {"total": int(total or 0), "transfers": int(count or 0)}

    return router


app = create_app()
