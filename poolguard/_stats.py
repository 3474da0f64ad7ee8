"""``poolguard.stats(obj)``: one entry point for every guarded pool, whatever wraps it.

It only dispatches: a Redis client to :func:`poolguard.redis.stats`, a ``poolguard.postgres``
pool to its own ``stats()``, an engine to ``integrations/sqlalchemy/engine.py``. Every one of
them returns the snapshot of a ``core/stats.py`` :class:`PoolStats`; ``metrics/`` exports it.
"""

from __future__ import annotations

from typing import Any

from poolguard.errors import ConfigError


def stats(obj: Any) -> dict[str, Any]:
    """Snapshot of the pool behind ``obj``: an Engine/AsyncEngine from ``create_engine()``, a
    Redis client from ``poolguard.redis``, or a pool from ``poolguard.postgres`` /
    ``poolguard.mysql``."""
    redis_pool = getattr(obj, "connection_pool", None)
    # A cluster client has a pool per node; its Policy is on the client itself.
    if getattr(redis_pool, "guard_policy", None) or getattr(obj, "guard_policy", None):
        from poolguard.redis import stats as redis_stats

        return redis_stats(obj)
    native = getattr(obj, "_pg", None) or getattr(obj, "_my", None)
    if native is not None and callable(getattr(obj, "stats", None)):
        snapshot: dict[str, Any] = obj.stats()  # a poolguard.postgres / poolguard.mysql pool
        return snapshot
    if hasattr(obj, "pool") or hasattr(obj, "sync_engine"):
        from poolguard.integrations.sqlalchemy import stats as engine_stats

        return engine_stats(obj)
    raise ConfigError(
        "poolguard.stats() takes an engine from poolguard.create_engine(), a client from"
        " poolguard.redis or a pool from poolguard.postgres / poolguard.mysql, not"
        f" {type(obj).__name__}"
    )
