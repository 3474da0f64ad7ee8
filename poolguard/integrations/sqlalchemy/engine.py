"""``poolguard.create_engine()`` / ``create_async_engine()``: real SQLAlchemy engines, guarded.

The returned objects are SQLAlchemy's own ``Engine`` / ``AsyncEngine`` (``sessionmaker`` and
``async_sessionmaker`` work unchanged). What poolguard adds is installed in four places:

- ``poolclass``: :class:`~poolguard.integrations.sqlalchemy.pool.GuardedQueuePool`;
- pool events: lifetime / idle eviction, validation, conditional reset;
- ``engine._connection_cls``: :class:`GuardedConnection` (statement retry and backstop);
- engine events: ``do_connect`` (client connect deadline), ``handle_error`` (classification).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from poolguard.config.address import address_of
from poolguard.config.settings import Settings
from poolguard.config.urls import dialect_of, redact
from poolguard.core.retry import Guard
from poolguard.errors import ConfigError
from poolguard.integrations.sqlalchemy._backend import SqlBackend, backend_for
from poolguard.integrations.sqlalchemy._errors import make_error
from poolguard.integrations.sqlalchemy._state import BACKSTOP_GRACE, PgState
from poolguard.integrations.sqlalchemy.connection import GuardedConnection, GuardedOptionEngine
from poolguard.integrations.sqlalchemy.pool import (
    GuardedAsyncQueuePool,
    GuardedQueuePool,
    install_pool_events,
)

__all__ = ["create_async_engine", "create_engine", "guard_of", "stats"]

_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
#: An acquire timeout of "none" still needs a number for SQLAlchemy's own bookkeeping.
_NO_ACQUIRE_TIMEOUT = 1e9


def create_engine(url: str | None = None, **overrides: Any) -> Engine:
    """A ``sqlalchemy.Engine`` (``postgresql+psycopg``, ``mysql+pymysql`` or
    ``mariadb+pymysql``) configured from DATABASE_URL and ``POOLGUARD_*``; keyword arguments
    override both. poolguard settings (``query_timeout=2``) and SQLAlchemy arguments
    (``echo=True``, ``connect_args={...}``) may be mixed."""
    settings, sa_kwargs = _split(url, overrides)
    state, kwargs = _prepare(settings, sa_kwargs, is_async=False)
    engine = sqlalchemy.create_engine(settings.sql_url(), **kwargs)
    _install(engine, state)
    return engine


def create_async_engine(url: str | None = None, **overrides: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine` (psycopg async or aiomysql underneath)."""
    settings, sa_kwargs = _split(url, overrides)
    state, kwargs = _prepare(settings, sa_kwargs, is_async=True)
    engine = sa_create_async_engine(settings.sql_url(async_=True), **kwargs)
    _install(engine.sync_engine, state)
    return engine


def guard_of(engine: Engine | AsyncEngine) -> PgState:
    """The poolguard state of an engine made by this module (raises otherwise)."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    state = getattr(sync.pool, "_pg", None)
    if not isinstance(state, PgState):
        raise ConfigError("this engine was not created by poolguard.create_engine()")
    return state


def stats(engine: Engine | AsyncEngine) -> dict[str, Any]:
    """Counters and gauges of the engine's pool (``engine.pool.stats()`` for sync engines)."""
    state = guard_of(engine)
    return state.guard.stats.snapshot()


# --- construction ------------------------------------------------------------------------------


def _split(url: str | None, overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    mine = {k: v for k, v in overrides.items() if k in _SETTING_NAMES}
    rest = {k: v for k, v in overrides.items() if k not in _SETTING_NAMES}
    name = mine.pop("name", None)
    mine.pop("backend", None)
    if url is not None:
        mine["url"] = url
    settings = Settings.from_env(backend="sql", name=name, **mine)
    if settings.url is None:
        settings.sql_url()  # raises the ConfigError naming DATABASE_URL
    return settings, rest


def _prepare(
    settings: Settings, sa_kwargs: dict[str, Any], *, is_async: bool
) -> tuple[PgState, dict[str, Any]]:
    backend = backend_for(dialect_of(settings.sql_url()), backstop_grace=BACKSTOP_GRACE)
    name = settings.name or "default"
    guard = Guard.from_settings(
        settings,
        name=name,
        backend=backend.name,
        classify=backend.classify,
        make_error=make_error,
        target=address_of(settings.sql_url()),  # "cannot connect to host:port" messages
    )
    state = PgState(
        settings=settings,
        guard=guard,
        pgbouncer=_uses_pgbouncer(backend, settings),
        is_async=is_async,
        redacted_url=redact(settings.sql_url()),
        backend=backend,
    )
    connect_args = backend.connect_args(settings, is_async=is_async)
    connect_args.update(sa_kwargs.pop("connect_args", {}))
    kwargs: dict[str, Any] = {
        "poolclass": GuardedAsyncQueuePool if is_async else GuardedQueuePool,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.acquire_timeout or _NO_ACQUIRE_TIMEOUT,
        "pool_pre_ping": False,  # replaced by idle-based validation at checkout
        "pool_recycle": -1,  # replaced by the jittered max lifetime
        "pool_reset_on_return": None,  # replaced by the transaction-status-aware reset event
        "connect_args": connect_args,
    }
    kwargs.update(sa_kwargs)
    return state, kwargs


def _uses_pgbouncer(backend: SqlBackend, settings: Settings) -> bool:
    if backend.name != "postgres":
        return False
    from poolguard.backends.postgres import uses_pgbouncer

    return uses_pgbouncer(settings)


def _install(engine: Engine, state: PgState) -> None:
    pool = engine.pool
    pool._pg = state  # type: ignore[attr-defined]
    state.pool_ref[:] = [pool]
    state.guard.stats.gauges = functools.partial(_gauges, state)
    for note in state.settings.warnings():
        state.guard.stats.log.info("%s: %s", state.name, note, extra={"pool": state.name})
    engine._connection_cls = GuardedConnection
    engine._option_cls = GuardedOptionEngine
    install_pool_events(engine, state)
    event.listen(engine, "do_connect", functools.partial(_do_connect, state))
    event.listen(engine, "handle_error", functools.partial(_handle_error, state))


def _gauges(state: PgState) -> dict[str, Any]:
    stats = state.guard.stats
    return {
        **state.pool_ref[0].gauges(),
        "ambiguous_resolved": {
            outcome: stats.count(f"ambiguous_resolved.{outcome}")
            for outcome in ("committed", "aborted")
        },
    }


def _do_connect(state: PgState, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    return state.backend.do_connect(state, cargs, cparams)


def _handle_error(state: PgState, ctx: Any) -> None:
    # SQLAlchemy's psycopg dialect only calls a connection dead when psycopg says closed/broken;
    # our classification also knows 57P01 (terminated), 25006 (failover to a standby), MySQL's
    # 1290/1836 (read-only after a failover), ...
    c = state.backend.classify(ctx.original_exception)
    if c.disconnect and not ctx.is_disconnect and not ctx.is_pre_ping:
        ctx.is_disconnect = True
