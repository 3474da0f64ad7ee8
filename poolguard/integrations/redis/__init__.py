"""redis-py integration: guarded ``redis.Redis`` / ``redis.asyncio.Redis`` built from Settings.

Public entry points live in :mod:`poolguard.redis`; this package holds the adapters.
Here: :func:`build_client`, :func:`build_async_client` and :func:`build_sentinel_client`.
``_common.py`` holds what the two adapters share, ``asyncio.py`` the asyncio classes and
``sync.py`` the sync ones (generated from ``asyncio.py``); the Redis knowledge is
``poolguard/backends/redis.py``.
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
    c.check_retry_options(options, " (in the URL's query string)")
    # As in redis-py's ConnectionPool.from_url: a connection_class keyword beats the URL's.
    plain = redis_kwargs.pop("connection_class", None) or options.get("connection_class")
    options.pop("connection_class", None)
    guarded = classes.get(plain or default_class)
    if guarded is None:
        from poolguard.errors import ConfigError

        raise ConfigError(
            f"connection_class={plain!r} cannot be guarded: poolguard wraps redis-py's "
            "Connection, SSLConnection and UnixDomainSocketConnection",
            variable="connection_class",
        )
    unix = "path" in options
    kwargs = c.pool_kwargs(settings, unix)
    kwargs.update(redis_kwargs)  # redis-py keywords (decode_responses, ...) over poolguard's
    # And what the URL says wins over keywords, as in redis-py's from_url
    # (``from_url("redis://h/0", db=1)`` uses db 0).
    kwargs.update(options)
    kwargs["connection_class"] = guarded
    return kwargs


def _label(settings: Settings) -> str:
    return f"redis pool {settings.name or 'redis'!r} ({redact(settings.redis_url())})"


#: poolguard's own keywords of ``from_url`` that configure ``client.pubsub()`` (not redis-py).
PUBSUB_KEYWORDS = ("pubsub_reconnect", "on_resubscribe")


def _pubsub_options(redis_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: redis_kwargs.pop(k) for k in PUBSUB_KEYWORDS if k in redis_kwargs}


def _finish(client: Any, pubsub: dict[str, Any]) -> Any:
    client.auto_close_connection_pool = True  # the client owns the pool it was built with
    client.guard_pubsub_reconnect = bool(pubsub.get("pubsub_reconnect", False))
    client.guard_on_resubscribe = pubsub.get("on_resubscribe")
    return client


def build_client(
    settings: Settings, redis_kwargs: dict[str, Any], hooks: Hooks | None = None
) -> Any:
    """A :class:`~poolguard.integrations.redis.sync.GuardedRedis` over a guarded pool."""
    from redis.connection import Connection

    from poolguard.integrations.redis import sync

    redis_kwargs = dict(redis_kwargs)
    pubsub = _pubsub_options(redis_kwargs)
    kwargs = _prepare(settings, redis_kwargs, sync.CONNECTION_CLASSES, Connection)
    client_only = {k: kwargs.pop(k) for k in ("single_connection_client",) if k in kwargs}
    pool_holder: list[Any] = []
    policy = c.build_policy(
        settings, _label(settings), lambda: pool_holder[0].guard_gauges(), hooks
    )
    pool = sync.GuardedBlockingConnectionPool(poolguard_policy=policy, **kwargs)
    pool_holder.append(pool)
    return _finish(sync.GuardedRedis(connection_pool=pool, **client_only), pubsub)


def build_async_client(
    settings: Settings, redis_kwargs: dict[str, Any], hooks: Hooks | None = None
) -> Any:
    """An :class:`~poolguard.integrations.redis.asyncio.AsyncGuardedRedis` over a guarded pool."""
    from redis.asyncio.connection import Connection

    from poolguard.integrations.redis import asyncio as aio

    redis_kwargs = dict(redis_kwargs)
    pubsub = _pubsub_options(redis_kwargs)
    kwargs = _prepare(settings, redis_kwargs, aio.CONNECTION_CLASSES, Connection)
    client_only = {k: kwargs.pop(k) for k in ("single_connection_client",) if k in kwargs}
    pool_holder: list[Any] = []
    policy = c.build_policy(
        settings, _label(settings), lambda: pool_holder[0].guard_gauges(), hooks
    )
    pool = aio.AsyncGuardedBlockingConnectionPool(poolguard_policy=policy, **kwargs)
    pool_holder.append(pool)
    return _finish(aio.AsyncGuardedRedis(connection_pool=pool, **client_only), pubsub)


# -- Sentinel --------------------------------------------------------------------------------

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_SENTINEL_PORT = 26379


def is_sentinel_url(url: str | None) -> bool:
    return url is not None and url.strip().lower().startswith(SENTINEL_SCHEMES)


def parse_sentinel_url(url: str) -> dict[str, Any]:
    """``redis+sentinel://[[user]:password@]h1:26379,h2/mymaster[/db]`` → builder arguments.

    The credentials are the Redis master's (as in other clients); Sentinel's own credentials,
    if any, go in ``sentinel_kwargs``.
    """
    from urllib.parse import unquote

    from poolguard.errors import ConfigError

    text = url.strip()
    scheme, _, rest = text.partition("://")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        hosts, userinfo = authority, ""
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts:
        raise ConfigError(
            f"{redact(text)!r} is not a Sentinel URL: expected "
            "redis+sentinel://[:password@]host:26379[,host2:26379]/service_name[/db]",
            variable="REDIS_URL",
        )
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            sentinels.append((host or item, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError:
            raise ConfigError(
                f"{redact(text)!r}: bad Sentinel port in {item!r}", variable="REDIS_URL"
            ) from None
    options: dict[str, Any] = {"sentinels": sentinels, "service_name": unquote(parts[0])}
    if len(parts) > 1:
        options["db"] = int(parts[1])
    user, colon, password = userinfo.partition(":")
    if user:
        options["username"] = unquote(user)
    if colon:
        options["password"] = unquote(password)
    if scheme.lower().startswith("rediss"):
        options["ssl"] = True
    return options


def _sentinel_kwargs(settings: Settings, given: dict[str, Any] | None) -> dict[str, Any]:
    # Sentinel queries are reads: bounded by the connect timeout, with redis-py's retry off
    # (the Guard retries the whole connect when discovery fails).
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    base = {
        "socket_timeout": settings.connect_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_keepalive": settings.tcp_keepalive is not None,
        "retry": Retry(NoBackoff(), 0),
    }
    base.update(given or {})
    return base


def _sentinel_label(settings: Settings, service_name: str, sentinels: list[Any]) -> str:
    where = ",".join(f"{h}:{p}" for h, p in sentinels)
    return f"redis pool {settings.name or 'redis'!r} (sentinel {service_name} via {where})"


def build_sentinel_client(
    settings: Settings,
    sentinels: list[tuple[str, int]],
    service_name: str,
    redis_kwargs: dict[str, Any],
    *,
    sentinel_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    asyncio: bool = False,
) -> Any:
    """A guarded client for the master of ``service_name``, discovered through Sentinel."""
    sentinel_class: Any
    if asyncio:
        import redis.asyncio.sentinel

        from poolguard.integrations.redis import asyncio as amod

        sentinel_class = redis.asyncio.sentinel.Sentinel
        pool_class: Any = amod.AsyncGuardedSentinelPool
        conn_class: Any = amod.AsyncGuardedSentinelConnection
        client_class: Any = amod.AsyncGuardedRedis
    else:
        import redis.sentinel

        from poolguard.integrations.redis import sync

        sentinel_class = redis.sentinel.Sentinel
        pool_class = sync.GuardedSentinelPool
        conn_class = sync.GuardedSentinelConnection
        client_class = sync.GuardedRedis
    redis_kwargs = dict(redis_kwargs)
    pubsub = _pubsub_options(redis_kwargs)
    kwargs = c.pool_kwargs(settings, unix=False)
    kwargs.update(redis_kwargs)
    if kwargs.pop("ssl", False):
        raise NotImplementedError("TLS to a Sentinel-managed master is not wired yet")
    manager = sentinel_class(sentinels, sentinel_kwargs=_sentinel_kwargs(settings, sentinel_kwargs))
    label = _sentinel_label(settings, service_name, sentinels)
    pool_holder: list[Any] = []
    where = ",".join(f"{h}:{p}" for h, p in sentinels)
    policy = c.build_policy(
        settings,
        label,
        lambda: pool_holder[0].guard_gauges(),
        hooks,
        target=f"the master of {service_name!r} (via Sentinel {where})",
    )
    pool = pool_class(
        service_name, manager, poolguard_policy=policy, connection_class=conn_class, **kwargs
    )
    pool_holder.append(pool)
    client = _finish(client_class(connection_pool=pool), pubsub)
    client.guard_sentinel = manager  # kept for closing and inspection
    return client
