"""What the integrations share for live reconfiguration (``poolguard.reconfigure``).

Which settings may change on a live pool, which of them are *session* settings (baked into each
open connection: server-side timeouts, a driver's socket timeout), the ``stats()`` entries, and
the rewrite of connect parameters built at creation. The public entry point and the validation
are ``poolguard/_reconfigure.py``; each integration applies a new :class:`Settings` in its own
state object (``EngineState.reconfigure``, ``PoolRules.reconfigure``, ``reconfigure_policy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from poolguard.config.settings import Settings
from poolguard.core.stats import PoolStats

#: Settings a live pool can change (the rest need a new pool: see OUT_OF_SCOPE).
RECONFIGURABLE = (
    "retry_attempts",
    "retry_backoff_initial",
    "retry_backoff_max",
    "retry_backoff_multiplier",
    "retry_jitter",
    "retry_timeout",
    "retry_budget",
    "breaker_failures",
    "breaker_reset",
    "connect_timeout",
    "query_timeout",
    "transaction_timeout",
    "idle_in_transaction_timeout",
    "lock_timeout",
    "acquire_timeout",
    "validate_idle",
    "max_lifetime",
    "max_idle",
    "keepalive",
)

#: Settings each open connection carries from its connect (server-side timeouts, the driver's
#: socket timeout): a change retires the connections opened before it at their next checkout.
SESSION_FIELDS = frozenset(
    {"query_timeout", "transaction_timeout", "idle_in_transaction_timeout", "lock_timeout"}
)

#: Settings that need a new pool, with the reason given in the ConfigError.
OUT_OF_SCOPE = {
    "url": "the server a pool connects to is fixed: create a new engine/pool/client",
    "pool_size": "pool sizes are fixed for the pool's life: create a new engine/pool/client",
    "max_overflow": "pool sizes are fixed for the pool's life: create a new engine/pool/client",
    "tcp_keepalive": "socket options are set at connect: create a new engine/pool/client",
    "pgbouncer": "PgBouncer mode is chosen at creation: create a new engine/pool",
    "async_driver": "the driver is chosen at creation: create a new engine",
    "name": "a pool's name is its identity in logs and stats",
    "backend": "a pool's backend is fixed",
}

#: What a Redis client has no use for (there is no transaction or lock timeout to set).
NOT_FOR_REDIS = frozenset({"transaction_timeout", "idle_in_transaction_timeout", "lock_timeout"})


def live_gauges(settings: Settings, generation: int, stats: PoolStats) -> dict[str, Any]:
    """``stats()`` entries: how many reconfigurations were applied, the values in force, and
    how many connections were replaced because their session settings changed."""
    return {
        "reconfigured": generation,
        "reconfigured_evictions": stats.count("evictions.reconfigured"),
        "settings": {name: getattr(settings, name) for name in RECONFIGURABLE},
    }


def rewrite_params(
    params: Mapping[str, Any], built: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, Any]:
    """Connect parameters with poolguard's part rebuilt from the settings now in force.

    ``params`` are what a connect is about to use: poolguard's parameters as ``built`` at
    creation, merged with the user's own. A value the user set differently stays. libpq
    ``options`` hold both (poolguard's ``-c`` settings first, the user's after): poolguard's
    prefix is replaced; so do poolguard's entries of a dict (asyncpg's ``server_settings``).
    """
    out = dict(params)
    for key in built.keys() | current.keys():
        old, new = built.get(key), current.get(key)
        if old == new:
            continue
        have = out.get(key)
        if key == "options":
            rest = have or ""
            if old and rest.startswith(old):
                rest = rest[len(old) :]
            merged = " ".join(part for part in (new, rest.strip()) if part)
            if merged:
                out[key] = merged
            else:
                out.pop(key, None)
        elif isinstance(old, dict) or isinstance(new, dict):
            _rewrite_entries(out, key, have, old or {}, new or {})
        elif have == old:  # not the user's value: ours, as built
            if new is None:
                out.pop(key, None)
            else:
                out[key] = new
    return out


def _rewrite_entries(
    out: dict[str, Any], key: str, have: Any, old: Mapping[str, Any], new: Mapping[str, Any]
) -> None:
    """A dict of settings shared with the user (asyncpg's ``server_settings``): poolguard's
    entries as built are replaced by today's, the user's own (or overridden) entries stay."""
    theirs = {k: v for k, v in (have or {}).items() if k not in old or old[k] != v}
    merged = {**new, **theirs}
    if merged:
        out[key] = merged
    else:
        out.pop(key, None)
