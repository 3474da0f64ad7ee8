"""Native PostgreSQL pools for apps that do not use SQLAlchemy: psycopg 3 + psycopg_pool, guarded.

::

    import poolguard.postgres

    pool = poolguard.postgres.create_pool()          # DATABASE_URL + POOLGUARD_* settings
    with pool.connection() as conn:                  # psycopg_pool's API, unchanged
        conn.execute("UPDATE ...")
    n = pool.fetchval("SELECT count(*) FROM t")      # one statement, retried when safe
    pool.transaction(lambda conn: transfer(conn))    # unit of work, re-run on 40001/40P01

    async with poolguard.postgres.create_async_pool() as apool:
        rows = await apool.fetchall("SELECT ...")

The pools *are* ``psycopg_pool.ConnectionPool`` / ``AsyncConnectionPool`` objects with the same
settings as :func:`poolguard.create_engine`: pool_size / max_overflow (min_size / max_size),
acquire, connect, query and transaction timeouts, validation after ``validate_idle``, jittered
max lifetime, max idle, classification, retries, breaker and stats. Keyword arguments are
poolguard settings (``query_timeout=2``), psycopg_pool arguments (``open``, ``num_workers``,
``configure``, ``max_waiting``, ``reconnect_failed`` ...) or ``kwargs={...}`` for psycopg's
connect (``application_name``, ``row_factory`` ...). See docs/postgres-native.md.

This module only builds settings and pools; the pools are ``poolguard/integrations/psycopg_pool/``,
the PostgreSQL knowledge ``poolguard/backends/postgres.py``. For SQLAlchemy, use
:func:`poolguard.create_engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolguard.config.settings import Settings
    from poolguard.core.stats import Hooks
    from poolguard.integrations.psycopg_pool import (
        GuardedAsyncConnection,
        GuardedAsyncConnectionPool,
        GuardedConnection,
        GuardedConnectionPool,
    )
    from poolguard.integrations.psycopg_pool._rules import PoolRules

__all__ = [
    "GuardedAsyncConnection",
    "GuardedAsyncConnectionPool",
    "GuardedConnection",
    "GuardedConnectionPool",
    "create_async_pool",
    "create_pool",
    "settings_for",
    "stats",
]

_LAZY = frozenset(
    {"GuardedAsyncConnection", "GuardedAsyncConnectionPool", "GuardedConnection",
     "GuardedConnectionPool"}
)  # fmt: skip


def __getattr__(name: str) -> Any:
    # The classes load psycopg_pool: only on first use, so ``import poolguard.postgres`` is cheap.
    if name not in _LAZY:
        raise AttributeError(f"module 'poolguard.postgres' has no attribute {name!r}")
    from poolguard.integrations import psycopg_pool as native

    value = getattr(native, name)
    globals()[name] = value
    return value


#: Names the pools themselves set from poolguard settings: not accepted as overrides.
_RESERVED = frozenset(
    {"conninfo", "connection_class", "check", "min_size", "max_size", "timeout",
     "max_lifetime", "max_idle"}
)  # fmt: skip


def settings_for(url: str | None = None, **overrides: Any) -> Settings:
    """The :class:`~poolguard.config.Settings` ``create_pool`` would use (for display/tests)."""
    return _split(url, overrides)[0]


def create_pool(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> GuardedConnectionPool:
    """A guarded, opened ``psycopg_pool.ConnectionPool`` (URL from ``DATABASE_URL`` unless given).

    Pass ``open=False`` to open it later (``pool.open(wait=True)`` fails fast when the server
    is unreachable); close it with ``pool.close()`` or use it as a context manager.
    """
    from poolguard.integrations._fork import track_native_pool
    from poolguard.integrations.psycopg_pool import GuardedConnectionPool

    settings, rest = _split(url, overrides)
    rules = _rules(settings, hooks)
    rest.setdefault("open", True)
    pool = GuardedConnectionPool(_conninfo(settings), rules=rules, **_pool_args(rules, rest))
    track_native_pool(pool)  # opened before a fork: refused in the child (integrations/_fork.py)
    return pool


def create_async_pool(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> GuardedAsyncConnectionPool:
    """A guarded ``psycopg_pool.AsyncConnectionPool``, not yet open (psycopg_pool opens async
    pools in a running loop): ``async with create_async_pool() as pool:`` or
    ``await pool.open()``."""
    from poolguard.integrations._fork import track_native_pool
    from poolguard.integrations.psycopg_pool import GuardedAsyncConnectionPool

    settings, rest = _split(url, overrides)
    rules = _rules(settings, hooks)
    rest.setdefault("open", False)
    pool = GuardedAsyncConnectionPool(_conninfo(settings), rules=rules, **_pool_args(rules, rest))
    track_native_pool(pool)  # opened before a fork: refused in the child (integrations/_fork.py)
    return pool


def stats(pool: Any) -> dict[str, Any]:
    """Snapshot of a guarded pool: gauges, connects, validations, retries, give-ups..."""
    from poolguard.integrations._native import snapshot

    return snapshot(pool, marker="_pg", module="poolguard.postgres")


# --- construction ------------------------------------------------------------------------------


def _split(url: str | None, overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    from poolguard.integrations._native import split_overrides

    return split_overrides(
        url,
        overrides,
        refused=_RESERVED,
        set_from="its settings (pool_size, max_overflow, acquire_timeout, max_lifetime,"
        " max_idle, validate_idle)",
    )


def _conninfo(settings: Settings) -> str:
    from poolguard.config.urls import dialect_of, libpq_query_hosts, redact, split_scheme
    from poolguard.errors import ConfigError

    url = settings.sql_url()
    if dialect_of(url) != "postgresql":
        raise ConfigError(
            f"{redact(url)}: poolguard.postgres pools are for PostgreSQL",
            variable="DATABASE_URL",
        )
    # libpq wants no "+psycopg" driver suffix, and a multi-host list in its own form.
    return "postgresql://" + libpq_query_hosts(split_scheme(url)[1])


def _rules(settings: Settings, hooks: Hooks | None) -> PoolRules:
    from poolguard.backends import postgres as pg
    from poolguard.config.urls import redact
    from poolguard.integrations._native import native_guard
    from poolguard.integrations.psycopg_pool._errors import make_error
    from poolguard.integrations.psycopg_pool._rules import PoolRules, classify

    guard = native_guard(
        settings, backend="postgres", classify=classify, make_error=make_error, hooks=hooks
    )
    return PoolRules(
        settings=settings,
        guard=guard,
        pgbouncer=pg.uses_pgbouncer(settings),
        redacted_url=redact(settings.sql_url()),
    )


def _pool_args(rules: PoolRules, rest: dict[str, Any]) -> dict[str, Any]:
    from poolguard.backends import postgres as pg
    from poolguard.integrations.psycopg_pool._rules import NO_ACQUIRE_TIMEOUT, NO_MAX_IDLE

    s = rules.settings
    connect = pg.connect_params(s)
    if rules.pgbouncer:
        connect["prepare_threshold"] = None  # server-side prepared statements break there
    connect.update(rest.pop("kwargs", None) or {})
    args: dict[str, Any] = {
        "kwargs": connect,
        "min_size": s.pool_size,
        "max_size": s.pool_size + s.max_overflow,
        "timeout": s.acquire_timeout or NO_ACQUIRE_TIMEOUT,
        "max_lifetime": s.max_lifetime or float("inf"),  # psycopg_pool jitters it by -5%..0
        "max_idle": s.max_idle or NO_MAX_IDLE,
        "name": f"poolguard-{rules.name}",
    }
    args.update(rest)
    return args
