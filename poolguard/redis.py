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
the Redis defaults (``Settings.from_env(backend="redis")``). Other keyword arguments
(``decode_responses=True``, ``client_name=...``) go to redis-py unchanged. See docs/redis.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from poolguard.integrations.redis._common import idempotent as _idempotent
from poolguard.integrations.redis._common import split_overrides

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from poolguard.core.stats import Hooks

__all__ = [
    "async_from_url",
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


def from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.Redis:
    """A guarded ``redis.Redis`` (URL from ``REDIS_URL`` unless given)."""
    from poolguard.integrations.redis import build_client

    _ours, theirs = split_overrides(dict(overrides))
    return build_client(settings_for(url, **overrides), theirs, hooks)  # type: ignore[no-any-return]


def async_from_url(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> redis.asyncio.Redis:
    """A guarded ``redis.asyncio.Redis`` (URL from ``REDIS_URL`` unless given)."""
    from poolguard.integrations.redis import build_async_client

    _ours, theirs = split_overrides(dict(overrides))
    return build_async_client(settings_for(url, **overrides), theirs, hooks)  # type: ignore[no-any-return]


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
    policy = getattr(pool, "pg_policy", None)
    if policy is None:
        raise TypeError("poolguard.redis.stats() needs a client made by poolguard.redis.from_url")
    snapshot: dict[str, Any] = policy.guard.stats.snapshot()
    return snapshot


def learn_commands(client: Any) -> int:
    """Teach the table the server's read-only commands it lacks (modules): ``COMMAND INFO``.

    Sound in one direction only: the server flags a command ``readonly`` when it never writes.
    Returns how many commands were added. Sync clients only; call once at startup.
    """
    from poolguard.backends.redis import learn

    return learn(client.command())
