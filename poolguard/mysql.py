"""Native MySQL / MariaDB pool for asyncio apps that do not use SQLAlchemy: aiomysql, guarded.

::

    import poolguard.mysql

    async with poolguard.mysql.create_async_pool() as pool:   # DATABASE_URL + POOLGUARD_*
        async with pool.acquire() as conn:                     # aiomysql's pool API
            async with conn.cursor() as cur:
                await cur.execute("UPDATE ...")
        n = await pool.fetchval("SELECT count(*) FROM t")      # one statement, retried when safe
        await pool.run_transaction(transfer)                   # unit re-run on 1213/1205
        async with pool.transaction() as conn: ...             # one attempt, BEGIN/COMMIT

The pool keeps aiomysql's pool API (``acquire``, ``release``, ``close``/``wait_closed``,
``terminate``, ``clear``, ``size``...) on aiomysql connections, with the settings of
:func:`poolguard.create_engine`: pool_size (kept open by ``open()``) / max_overflow, acquire,
connect, query and transaction timeouts, validation after ``validate_idle``, jittered max
lifetime, max idle, classification, retries, breaker, keepalive and stats. Keyword arguments are
poolguard settings (``query_timeout=2``) or aiomysql connect arguments (``autocommit``,
``charset``, ``cursorclass``, ``init_command``...). Connections are autocommit unless
``autocommit=False`` is passed. See docs/mysql-native.md (differences from aiomysql's pool, and
why there is no sync ``create_pool``: use :func:`poolguard.create_engine`).

This module only builds settings and pools; the pool is
``poolguard/integrations/aiomysql_pool/``, the MySQL knowledge ``poolguard/backends/mysql.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolguard.config.settings import Settings
    from poolguard.core.stats import Hooks
    from poolguard.integrations.aiomysql_pool import GuardedConnection, GuardedPool

__all__ = ["GuardedConnection", "GuardedPool", "create_async_pool", "settings_for", "stats"]

_LAZY = frozenset({"GuardedConnection", "GuardedPool"})

#: aiomysql.create_pool arguments poolguard sets from its settings: refused as overrides.
_RESERVED = frozenset({"minsize", "maxsize", "pool_recycle", "loop", "echo"})
#: Connection fields the URL sets.
_FROM_URL = frozenset({"host", "port", "user", "password", "db", "unix_socket"})


def __getattr__(name: str) -> Any:
    # The classes load aiomysql: only on first use, so ``import poolguard.mysql`` is cheap.
    if name not in _LAZY:
        raise AttributeError(f"module 'poolguard.mysql' has no attribute {name!r}")
    from poolguard.integrations import aiomysql_pool as native

    value = getattr(native, name)
    globals()[name] = value
    return value


def settings_for(url: str | None = None, **overrides: Any) -> Settings:
    """The :class:`~poolguard.config.Settings` ``create_async_pool`` would use."""
    return _split(url, overrides)[0]


def create_async_pool(
    url: str | None = None, *, hooks: Hooks | None = None, **overrides: Any
) -> GuardedPool:
    """A guarded aiomysql pool (URL from ``DATABASE_URL`` unless given), not yet connected:
    ``async with create_async_pool() as pool:`` or ``await pool.open()`` opens ``pool_size``
    connections (failing fast); otherwise connections open on demand."""
    from poolguard.integrations.aiomysql_pool import GuardedPool

    settings, rest = _split(url, overrides)
    rules = _rules(settings, hooks)
    return GuardedPool(
        rules,
        minsize=settings.pool_size,
        maxsize=max(1, settings.pool_size + settings.max_overflow),
        conn_kwargs=_connect_kwargs(settings, rest),
    )


def stats(pool: Any) -> dict[str, Any]:
    """Snapshot of a pool made by :func:`create_async_pool`."""
    from poolguard.integrations._native import snapshot

    return snapshot(pool, marker="_my", module="poolguard.mysql")


# --- construction ------------------------------------------------------------------------------


def _split(url: str | None, overrides: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    from poolguard.config.urls import dialect_of, redact
    from poolguard.errors import ConfigError
    from poolguard.integrations._native import split_overrides

    settings, rest = split_overrides(
        url,
        overrides,
        refused=_RESERVED | _FROM_URL,
        set_from="its settings or the URL (pool_size, max_overflow, max_lifetime, max_idle,"
        " DATABASE_URL)",
    )
    sql_url = settings.sql_url(async_=True)
    if dialect_of(sql_url) != "mysql":
        raise ConfigError(
            f"{redact(sql_url)}: poolguard.mysql pools are for MySQL / MariaDB",
            variable="DATABASE_URL",
        )
    return settings, rest


def _connect_kwargs(settings: Settings, rest: dict[str, Any]) -> dict[str, Any]:
    """aiomysql ``Connection`` arguments: the URL's, poolguard's timeouts, the user's."""
    import sqlalchemy

    from poolguard.backends import mysql as my
    from poolguard.integrations.aiomysql_pool._rules import BACKSTOP_GRACE

    url = sqlalchemy.make_url(settings.sql_url(async_=True))
    kwargs: dict[str, Any] = {"host": url.host or "localhost", "port": url.port or 3306}
    if url.username is not None:
        kwargs["user"] = url.username
    if url.password is not None:
        kwargs["password"] = url.password
    if url.database:
        kwargs["db"] = url.database
    for key, value in url.query.items():  # ?charset=utf8mb4&unix_socket=/run/mysqld.sock
        kwargs[key] = value if isinstance(value, str) else value[-1]
    kwargs.update(my.connect_params(settings, is_async=True, backstop_grace=BACKSTOP_GRACE))
    kwargs["autocommit"] = True  # helpers and returns need no round trip (docs)
    kwargs.update(rest)
    return kwargs


def _rules(settings: Settings, hooks: Hooks | None) -> Any:
    from poolguard.config.urls import redact
    from poolguard.integrations._native import native_guard
    from poolguard.integrations.aiomysql_pool._rules import MyRules, classify, make_error

    guard = native_guard(
        settings, backend="mysql", classify=classify, make_error=make_error, hooks=hooks
    )
    return MyRules(settings=settings, guard=guard, redacted_url=redact(settings.sql_url()))
