"""Guarded Redis clients: real ``redis.Redis`` / ``redis.asyncio.Redis`` objects, safe retries.

::

    import poolguard.redis

    r = poolguard.redis.from_url()           # redis.Redis; URL from REDIS_URL
    ar = poolguard.redis.async_from_url()    # redis.asyncio.Redis
    r.get("k")                               # retried through restarts and lost replies
    r.incr("n")                              # retried only when it cannot have been applied
    with poolguard.redis.idempotent():       # the caller vouches: safe to apply twice
        r.eval(script, 1, "k")
    poolguard.redis.stats(r)                 # counters, gauges, retries by reason

Settings come from keyword arguments, then ``POOLGUARD_REDIS_<X>``, then ``POOLGUARD_<X>``, then
the Redis defaults (``Settings.from_env(backend="redis")``). ``pubsub_reconnect=`` and
``on_resubscribe=`` configure ``pubsub()``; other keyword arguments (``decode_responses=True``,
``client_name=...``) go to redis-py unchanged, except redis-py retry options that would re-send
commands (refused with a ConfigError). See docs/redis.md.

This module only builds settings and clients; the adapters are ``poolguard/integrations/redis/``,
the command and error tables ``poolguard/backends/redis.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from poolguard.integrations.redis._common import ResubscribeGap, SubscriptionLost, split_overrides
from poolguard.integrations.redis._common import idempotent as _idempotent

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.cluster

    from poolguard.core.stats import Hooks

__all__ = [
    "ResubscribeGap",
    "SubscriptionLost",
    "async_cluster_from_url",
    "async_from_sentinel",
    "async_from_url",
    "cluster_from_url",
    "from_sentinel",
    "from_url",
    "idempotent",
    "is_idempotent",
    "learn_commands",
    "not_idempotent",
    "settings_for",
    "stats",
]


def settings_for(url: str | None = None, **overrides: Any) -> Any:
    """The :class:`~poolguard.config.Settings` ``from_url`` would use (for display/tests)."""
    from poolguard.config.settings import Settings

    ours, _theirs = split_overrides(dict(overrides))
    name = ours.pop("name", None)
    if url is not None:
        ours["url"] = url
    return Settings.from_env(backend="redis", name=name, **ours)


def _sentinel_url(url: str | None, overrides: dict[str, Any]) -> str | None:
    """The ``redis+sentinel://`` URL to use, if that is what was given or configured."""
    import os

    from poolguard.config import env
    from poolguard.integrations.redis import is_sentinel_url

    if url is None and "url" not in overrides:
        url = os.environ.get(env.url_variable("redis", overrides.get("name")))
    return url if is_sentinel_url(url) else None


def from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.Redis:
    """A guarded ``redis.Redis`` (URL from ``REDIS_URL`` unless given).

    ``redis+sentinel://[:password@]host:26379[,host2]/service[/db]`` goes through Sentinel.
    """
    from poolguard.integrations.redis import build_client

    sentinel = _sentinel_url(url, overrides)
    if sentinel is not None:
        return _from_sentinel_url(sentinel, hooks, overrides, asyncio=False)  # type: ignore[no-any-return]
    _ours, theirs = split_overrides(dict(overrides))
    return build_client(settings_for(url, **overrides), theirs, hooks)  # type: ignore[no-any-return]


def async_from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.asyncio.Redis:
    """A guarded ``redis.asyncio.Redis`` (URL from ``REDIS_URL`` unless given)."""
    from poolguard.integrations.redis import build_async_client

    sentinel = _sentinel_url(url, overrides)
    if sentinel is not None:
        return _from_sentinel_url(sentinel, hooks, overrides, asyncio=True)  # type: ignore[no-any-return]
    _ours, theirs = split_overrides(dict(overrides))
    return build_async_client(settings_for(url, **overrides), theirs, hooks)  # type: ignore[no-any-return]


def _from_sentinel_url(
    url: str, hooks: Hooks | None, overrides: dict[str, Any], *, asyncio: bool
) -> Any:
    from poolguard.integrations.redis import parse_sentinel_url

    options = parse_sentinel_url(url)
    sentinels = options.pop("sentinels")
    service_name = options.pop("service_name")
    return _sentinel(sentinels, service_name, hooks, {**options, **overrides}, asyncio=asyncio)


def from_sentinel(
    sentinels: list[tuple[str, int]],
    service_name: str,
    *,
    sentinel_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    **overrides: Any,
) -> redis.Redis:
    """A guarded ``redis.Redis`` on the master of ``service_name``, found through Sentinel.

    Every (re)connect asks Sentinel for the current master; after a failover the first
    ``READONLY`` drops the connection and the command is retried on the new master.
    """
    overrides["sentinel_kwargs"] = sentinel_kwargs
    return _sentinel(sentinels, service_name, hooks, overrides, asyncio=False)  # type: ignore[no-any-return]


def async_from_sentinel(
    sentinels: list[tuple[str, int]],
    service_name: str,
    *,
    sentinel_kwargs: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    **overrides: Any,
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`from_sentinel`."""
    overrides["sentinel_kwargs"] = sentinel_kwargs
    return _sentinel(sentinels, service_name, hooks, overrides, asyncio=True)  # type: ignore[no-any-return]


def _sentinel(
    sentinels: list[tuple[str, int]],
    service_name: str,
    hooks: Hooks | None,
    overrides: dict[str, Any],
    *,
    asyncio: bool,
) -> Any:
    from poolguard.config.settings import Settings
    from poolguard.integrations.redis import build_sentinel_client

    sentinel_kwargs = overrides.pop("sentinel_kwargs", None)
    overrides.pop("url", None)
    ours, theirs = split_overrides(overrides)
    name = ours.pop("name", None)
    # The address comes from Sentinel, so the settings carry no URL (REDIS_URL is not read).
    settings = Settings.from_env(backend="redis", name=name, url=None, **ours)
    return build_sentinel_client(
        settings,
        list(sentinels),
        service_name,
        theirs,
        sentinel_kwargs=sentinel_kwargs,
        hooks=hooks,
        asyncio=asyncio,
    )


def cluster_from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.cluster.RedisCluster:
    """A guarded ``redis.cluster.RedisCluster``; ``url`` names any node of the cluster
    (``redis://``, ``rediss://`` or ``redis+cluster://``; from ``REDIS_URL`` unless given).

    MOVED/ASK are followed by redis-py; CLUSTERDOWN, TRYAGAIN, MASTERDOWN, READONLY and a node
    that refuses connections (failing over) are retried within the retry window for any
    command; a lost reply only for idempotent ones. See docs/redis.md "Redis Cluster".
    """
    return _cluster(url, hooks, overrides, asyncio=False)  # type: ignore[no-any-return]


def async_cluster_from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.asyncio.RedisCluster:
    """The asyncio twin of :func:`cluster_from_url` (a ``redis.asyncio.RedisCluster``)."""
    return _cluster(url, hooks, overrides, asyncio=True)  # type: ignore[no-any-return]


def _cluster(
    url: str | None, hooks: Hooks | None, overrides: dict[str, Any], *, asyncio: bool
) -> Any:
    from poolguard.integrations.redis.cluster import build_cluster_client, plain_cluster_url

    ours, theirs = split_overrides(dict(overrides))
    settings = settings_for(plain_cluster_url(url), **ours)
    return build_cluster_client(settings, theirs, hooks, asyncio=asyncio)


@contextmanager
def idempotent(value: bool = True) -> Iterator[None]:
    """Commands (and pipelines) in this block may be applied twice: retry them after a lost reply.

    ``idempotent(False)`` does the opposite: never retry a command of the block once it may
    have been sent, even a read or ``SADD`` (e.g. when ``SADD``'s reply drives a dedup).
    Works for threads and asyncio tasks alike (a ContextVar).
    """
    with _idempotent(value):
        yield


def not_idempotent() -> Any:
    """Shorthand for ``idempotent(False)``."""
    return idempotent(False)


def is_idempotent(*args: Any) -> bool:
    """What poolguard's table says about a command: ``is_idempotent("SET", "k", "v", "NX")``."""
    from poolguard.backends.redis import is_idempotent as table

    return table(args)


def stats(client: Any) -> dict[str, Any]:
    """Snapshot of the client's pool: gauges, connects, validations, retries, give-ups..."""
    pool = getattr(client, "connection_pool", None)
    policy = getattr(pool, "guard_policy", None) or getattr(client, "guard_policy", None)
    if policy is None:
        raise TypeError("poolguard.redis.stats() needs a client made by poolguard.redis.from_url")
    counters = policy.guard.stats
    snapshot: dict[str, Any] = counters.snapshot()
    # Redis-only counters: pub/sub connections lost, and resubscriptions (each one a gap in
    # at-most-once delivery).
    for key in ("pubsub_drops", "resubscribes"):
        snapshot[key] = counters.count(key)
    return snapshot


def learn_commands(client: Any) -> int:
    """Teach the table the server's read-only commands it lacks (modules): ``COMMAND INFO``.

    Sound in one direction only: the server flags a command ``readonly`` when it never writes.
    Returns how many commands were added. Sync clients only; call once at startup.
    """
    from poolguard.backends.redis import learn

    return learn(client.command())
