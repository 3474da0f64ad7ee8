"""redis-py integration: guarded ``redis.Redis`` / ``redis.asyncio.Redis`` built from Settings.

Public entry points live in :mod:`poolguard.redis`; this package holds the adapters.
"""

# redis-py's internals (execute helpers, parse_url, pools) carry no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any

from poolguard.config.settings import Settings
from poolguard.config.urls import redact
from poolguard.core.stats import Hooks
from poolguard.integrations.redis import _common as c

__all__ = ["build_async_client", "build_client"]


def _url_parts(url: str) -> dict[str, Any]:
    from redis.connection import parse_url

    return dict(parse_url(url))


def _prepare(
    settings: Settings,
    redis_kwargs: dict[str, Any],
    classes: dict[type[Any], type[Any]],
    default_class: type[Any],
) -> dict[str, Any]:
    url = settings.redis_url()
    options = _url_parts(url)
    plain = options.pop("connection_class", default_class)
    guarded = classes.get(plain)
    if guarded is None:  # pragma: no cover - redis-py grew a connection class
        raise TypeError(f"poolguard does not know redis-py connection class {plain!r}")
    unix = "path" in options
    kwargs = c.pool_kwargs(settings, unix)
    kwargs.update(options)
    kwargs.update(redis_kwargs)  # explicit redis-py keywords win (decode_responses, ...)
    kwargs["connection_class"] = guarded
    return kwargs


def _label(settings: Settings) -> str:
    return f"redis pool {settings.name or 'redis'!r} ({redact(settings.redis_url())})"


def build_client(
    settings: Settings, redis_kwargs: dict[str, Any], hooks: Hooks | None = None
) -> Any:
    """A :class:`~poolguard.integrations.redis.sync.GuardedRedis` over a guarded pool."""
    from redis.connection import Connection

    from poolguard.integrations.redis import sync

    kwargs = _prepare(settings, redis_kwargs, sync.CONNECTION_CLASSES, Connection)
    client_only = {k: kwargs.pop(k) for k in ("single_connection_client",) if k in kwargs}
    pool_holder: list[Any] = []
    label = _label(settings)
    guard = c.build_guard(settings, label, lambda: pool_holder[0].pg_gauges(), hooks)
    policy = c.Policy(guard, settings, label)
    pool = sync.GuardedBlockingConnectionPool(poolguard_policy=policy, **kwargs)
    pool_holder.append(pool)
    client = sync.GuardedRedis(connection_pool=pool, **client_only)
    client.auto_close_connection_pool = True  # the client owns the pool it was built with
    return client


def build_async_client(
    settings: Settings, redis_kwargs: dict[str, Any], hooks: Hooks | None = None
) -> Any:
    """An :class:`~poolguard.integrations.redis.asyncio.AsyncGuardedRedis` over a guarded pool."""
    from redis.asyncio.connection import Connection

    from poolguard.integrations.redis import asyncio as aio

    kwargs = _prepare(settings, redis_kwargs, aio.CONNECTION_CLASSES, Connection)
    client_only = {k: kwargs.pop(k) for k in ("single_connection_client",) if k in kwargs}
    pool_holder: list[Any] = []
    label = _label(settings)
    guard = c.build_guard(settings, label, lambda: pool_holder[0].pg_gauges(), hooks)
    policy = c.Policy(guard, settings, label)
    pool = aio.AsyncGuardedBlockingConnectionPool(poolguard_policy=policy, **kwargs)
    pool_holder.append(pool)
    client = aio.AsyncGuardedRedis(connection_pool=pool, **client_only)
    client.auto_close_connection_pool = True
    return client
