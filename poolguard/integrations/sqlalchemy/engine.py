"""``poolguard.create_engine()`` / ``create_async_engine()``: real SQLAlchemy engines, guarded.

The returned objects are SQLAlchemy's own ``Engine`` / ``AsyncEngine`` (``sessionmaker`` and
``async_sessionmaker`` work unchanged). What poolguard adds is installed in four places:

- the pool: :class:`~poolguard.integrations.sqlalchemy.pool.GuardedQueuePool` by default (and
  for ``poolclass=QueuePool``), a guarded twin of any other ``poolclass``, or a ``pool=``
  instance guarded in place; pool events: session setup, conditional reset;
- ``engine._connection_cls``: :class:`GuardedConnection` (statement retry and backstop);
- ``engine.dialect.connect``: the connect under the client deadline, called after the user's
  ``do_connect`` listeners (see ``_backend.py``); an ``async_creator`` is bounded too;
- the ``handle_error`` event (classification).

Drop-in rule: every ``sqlalchemy.create_engine`` keyword is honoured or refused with a
``ConfigError`` naming it (``_keywords.py``, docs/postgres.md "SQLAlchemy keywords"). Also here:
:func:`guard_of` (an engine's :class:`EngineState`, ``_state.py``) and :func:`stats`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool

from poolguard.config.address import address_of
from poolguard.config.settings import Settings
from poolguard.config.urls import dialect_of, redact
from poolguard.core.retry import Guard
from poolguard.errors import ConfigError
from poolguard.integrations._fork import track_engine
from poolguard.integrations._live import live_gauges
from poolguard.integrations.sqlalchemy._backend import SqlBackend, backend_for
from poolguard.integrations.sqlalchemy._errors import make_error
from poolguard.integrations.sqlalchemy._keywords import reset_mode, translate
from poolguard.integrations.sqlalchemy._state import BACKSTOP_GRACE, EngineState
from poolguard.integrations.sqlalchemy.connection import GuardedConnection, GuardedOptionEngine
from poolguard.integrations.sqlalchemy.pool import (
    guard_instance,
    guarded_class,
    install_pool_events,
)
from poolguard.logs import pool_fields

__all__ = ["create_async_engine", "create_engine", "guard_of", "stats"]

_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
#: An acquire timeout of "none" still needs a number for SQLAlchemy's own bookkeeping.
_NO_ACQUIRE_TIMEOUT = 1e9
#: poolguard setting -> the pool class argument it becomes, and SQLAlchemy's keyword for it.
#: A pool class without the argument (NullPool...) refuses the setting when given as keyword.
_POOL_ARGS = (
    ("pool_size", "pool_size", "pool_size"),
    ("max_overflow", "max_overflow", "max_overflow"),
    ("acquire_timeout", "timeout", "pool_timeout"),
)


def create_engine(url: str | URL | None = None, **overrides: Any) -> Engine:
    """A ``sqlalchemy.Engine`` (``postgresql+psycopg``, ``mysql+pymysql`` or
    ``mariadb+pymysql``) configured from DATABASE_URL and ``POOLGUARD_*``; keyword arguments
    override both. poolguard settings (``query_timeout=2``) and SQLAlchemy arguments
    (``echo=True``, ``connect_args={...}``, ``poolclass=NullPool``) may be mixed; ``url`` may
    be a string or a SQLAlchemy ``URL``."""
    settings, sa_kwargs, given = _split(url, overrides)
    state, kwargs = _prepare(settings, sa_kwargs, given, is_async=False)
    engine = sqlalchemy.create_engine(settings.sql_url(), **kwargs)
    _install(engine, state, sa_kwargs)
    return engine


def create_async_engine(url: str | URL | None = None, **overrides: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine` (psycopg async, asyncpg or aiomysql underneath:
    ``postgresql+asyncpg://``, or ``async_driver="asyncpg"`` / ``POOLGUARD_ASYNC_DRIVER``)."""
    settings, sa_kwargs, given = _split(url, overrides)
    state, kwargs = _prepare(settings, sa_kwargs, given, is_async=True)
    creator = kwargs.get("async_creator")
    if creator is not None:
        # SQLAlchemy hands it straight to the driver adapter (no do_connect, no
        # dialect.connect): bound it here.
        kwargs["async_creator"] = functools.partial(state.backend.bounded_creator, state, creator)
    engine = sa_create_async_engine(settings.sql_url(async_=True), **kwargs)
    _install(engine.sync_engine, state, sa_kwargs)
    return engine


def guard_of(engine: Engine | AsyncEngine) -> EngineState:
    """The poolguard state of an engine made by this module (raises otherwise)."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    state = getattr(sync.pool, "_guard_state", None)
    if not isinstance(state, EngineState):
        raise ConfigError("this engine was not created by poolguard.create_engine()")
    return state


def stats(engine: Engine | AsyncEngine) -> dict[str, Any]:
    """Counters and gauges of the engine's pool (``engine.pool.stats()`` for sync engines)."""
    state = guard_of(engine)
    return state.guard.stats.snapshot()


# --- construction ------------------------------------------------------------------------------


def _split(
    url: str | URL | None, overrides: dict[str, Any]
) -> tuple[Settings, dict[str, Any], dict[str, str]]:
    """(settings, SQLAlchemy keywords, {poolguard setting given as a keyword: as written})."""
    written = {"pool_timeout": "acquire_timeout", "pool_recycle": "max_lifetime"}
    given = {written.get(k, k): k for k in overrides}
    overrides = translate(dict(overrides))
    mine = {k: v for k, v in overrides.items() if k in _SETTING_NAMES}
    rest = {k: v for k, v in overrides.items() if k not in _SETTING_NAMES}
    name = mine.pop("name", None)
    if mine.pop("backend", "sql") != "sql":
        raise ConfigError("backend: a SQL engine's backend is 'sql'", variable="backend")
    if url is not None:
        mine["url"] = url
    settings = Settings.from_env(backend="sql", name=name, **mine)
    if settings.url is None:
        settings.sql_url()  # raises the ConfigError naming DATABASE_URL
    return settings, rest, {k: given.get(k, k) for k in mine if k != "url"}


def _prepare(
    settings: Settings, sa_kwargs: dict[str, Any], given: dict[str, str], *, is_async: bool
) -> tuple[EngineState, dict[str, Any]]:
    url = settings.sql_url(async_=is_async)
    backend = backend_for(dialect_of(url), backstop_grace=BACKSTOP_GRACE, driver=_driver_of(url))
    name = settings.name or "default"
    guard = Guard.from_settings(
        settings,
        name=name,
        backend=backend.name,
        classify=backend.classify,
        make_error=make_error,
        target=address_of(settings.sql_url()),  # "cannot connect to host:port" messages
    )
    state = EngineState(
        settings=settings,
        guard=guard,
        pgbouncer=_uses_pgbouncer(backend, settings),
        is_async=is_async,
        redacted_url=redact(settings.sql_url()),
        backend=backend,
        reset=reset_mode(sa_kwargs.get("pool_reset_on_return", "rollback")),
    )
    kwargs = dict(sa_kwargs)
    state.built_connect_args = backend.connect_args(settings, is_async=is_async)
    kwargs["connect_args"] = backend.merge_connect_args(
        state.built_connect_args, sa_kwargs.get("connect_args") or {}
    )
    if kwargs.get("pool") is None:
        _check_asyncio(kwargs.get("poolclass"), is_async)
        kwargs.update(_pool_kwargs(settings, kwargs.get("poolclass"), given, is_async=is_async))
    else:
        _check_asyncio(type(kwargs["pool"]), is_async)
        # The instance was built with its own size, timeout and reset: poolguard's would not
        # reach it.
        pool_keywords = {"poolclass", "pool_reset_on_return"} & set(kwargs)
        _refuse([given[s] for s, _arg, _kw in _POOL_ARGS if s in given] + sorted(pool_keywords))
        kwargs["pool"] = guard_instance(kwargs["pool"])
    return state, kwargs


def _driver_of(url: str) -> str:
    """``"asyncpg"`` of ``postgresql+asyncpg://...`` (the URL is normalized: one "+")."""
    return url.partition("://")[0].partition("+")[2]


def _check_asyncio(poolclass: type[Pool] | None, is_async: bool) -> None:
    """SQLAlchemy's own check, made before the class is swapped for its guarded twin, so that
    the error names the user's class (``QueuePool``), not poolguard's (``GuardedQueuePool``)."""
    if poolclass is None:
        return
    # Only a class that fixes it (QueuePool: False, AsyncAdaptedQueuePool: True); others
    # (NullPool, StaticPool...) follow their dialect, through a property.
    owner = next((k for k in poolclass.__mro__ if "_is_asyncio" in k.__dict__), None)
    fixed = None if owner is None else owner.__dict__["_is_asyncio"]
    if not isinstance(fixed, bool) or fixed is is_async:
        return
    raise sqlalchemy.exc.ArgumentError(
        f"Pool class {poolclass.__name__} cannot be used with"
        f" {'non-' if not is_async else ''}asyncio engine",
        code="pcls",
    )


def _pool_kwargs(
    settings: Settings, poolclass: type[Pool] | None, given: dict[str, str], *, is_async: bool
) -> dict[str, Any]:
    """poolclass and its arguments: poolguard's rules replace pre_ping, recycle and reset."""
    if poolclass is None:
        poolclass = AsyncAdaptedQueuePool if is_async else QueuePool
    kwargs: dict[str, Any] = {
        "poolclass": guarded_class(poolclass),
        "pool_pre_ping": False,  # replaced by idle-based validation at checkout
        "pool_recycle": -1,  # replaced by the jittered max lifetime
        "pool_reset_on_return": None,  # replaced by the transaction-status-aware reset event
    }
    accepted = sqlalchemy.util.get_cls_kwargs(poolclass)
    values = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "acquire_timeout": settings.acquire_timeout or _NO_ACQUIRE_TIMEOUT,
    }
    unused = []
    for setting, arg, keyword in _POOL_ARGS:
        if arg in accepted:  # SingletonThreadPool: pool_size only
            kwargs[keyword] = values[setting]
        elif setting in given:
            unused.append(given[setting])
    _refuse(unused, f"with poolclass={poolclass.__name__}")
    return kwargs


def _refuse(keywords: list[str], why: str = "with pool=<instance>") -> None:
    if keywords:
        raise ConfigError(
            f"{keywords[0]} has no effect {why} (poolguard refuses it rather than ignore it):"
            " drop it (see docs/postgres.md 'Other pool classes')",
            variable=keywords[0],
        )


def _uses_pgbouncer(backend: SqlBackend, settings: Settings) -> bool:
    if backend.name != "postgres":
        return False
    from poolguard.backends.postgres import uses_pgbouncer

    return uses_pgbouncer(settings)


def _install(engine: Engine, state: EngineState, sa_kwargs: dict[str, Any]) -> None:
    pool = engine.pool
    pool._guard_state = state  # type: ignore[attr-defined]
    state.pool_ref[:] = [pool]
    state.guard.stats.gauges = functools.partial(_gauges, state)
    stats = state.guard.stats
    for note in state.settings.warnings():
        stats.log.info("%s: %s", state.name, note, extra=pool_fields(stats, "config_warning"))
    # Forked children (gunicorn --preload...) start with an empty pool: see _fork.py.
    track_engine(engine)
    engine._connection_cls = GuardedConnection
    engine._option_cls = GuardedOptionEngine
    # A pool= instance keeps its own reset_on_return (the user built it that way).
    install_pool_events(engine, state, reset=sa_kwargs.get("pool") is None)
    _install_connect(engine.dialect, state, module_given=sa_kwargs.get("module") is not None)
    state.backend.adapt_dialect(engine.dialect, state)
    event.listen(engine, "handle_error", functools.partial(_handle_error, state))


def _install_connect(dialect: Any, state: EngineState, *, module_given: bool) -> None:
    """Replace ``dialect.connect`` (SQLAlchemy's last step, after the do_connect listeners)
    by the connect under the client deadline."""
    driver_connect = None
    if not module_given and type(dialect).connect is DefaultDialect.connect:
        # What SQLAlchemy's own connect would call (a module= is never imported by us).
        driver_connect = _plain(type(dialect).import_dbapi().connect)
    dialect.connect = functools.partial(_connect, state, dialect, dialect.connect, driver_connect)


def _plain(fn: Any) -> Any:
    return getattr(fn, "__func__", fn)


def _connect(
    state: EngineState,
    dialect: Any,
    dialect_connect: Any,
    driver_connect: Any,
    *cargs: Any,
    **cparams: Any,
) -> Any:
    # Native = SQLAlchemy would call the driver's own connect: poolguard may make that call
    # itself, bounded. A module= or a patched dbapi.connect is called as the user arranged.
    native = driver_connect is not None and _plain(dialect.loaded_dbapi.connect) is driver_connect
    cparams = state.connect_params(cparams)  # after poolguard.reconfigure(): today's timeouts
    return state.backend.connect(state, dialect_connect, native, list(cargs), cparams)


def _gauges(state: EngineState) -> dict[str, Any]:
    stats = state.guard.stats
    return {
        **state.pool_ref[0].gauges(),
        **live_gauges(state.settings, state.generation, stats),
        "ambiguous_resolved": {
            outcome: stats.count(f"ambiguous_resolved.{outcome}")
            for outcome in ("committed", "aborted")
        },
    }


def _handle_error(state: EngineState, ctx: Any) -> None:
    # SQLAlchemy's psycopg dialect only calls a connection dead when psycopg says closed/broken;
    # our classification also knows 57P01 (terminated), 25006 (failover to a standby), MySQL's
    # 1290/1836 (read-only after a failover), ...
    c = state.backend.classify(ctx.original_exception)
    if c.disconnect and not ctx.is_disconnect and not ctx.is_pre_ping:
        ctx.is_disconnect = True
