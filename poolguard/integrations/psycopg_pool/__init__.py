"""Native psycopg 3 pools (sync + asyncio) built on psycopg_pool, guarded by poolguard.

Public entry points live in :mod:`poolguard.postgres` (``create_pool``, ``create_async_pool``).
Here: ``pool_async.py`` (the source) and ``pool.py`` (generated from it by
``tools/async_to_sync.py``), ``connection.py`` (the backstop on every socket wait), ``_rules.py``
(the decisions both pools share) and ``_errors.py`` (drop-in errors). PostgreSQL knowledge is
``poolguard/backends/postgres.py``.
"""

from __future__ import annotations

from poolguard.integrations.psycopg_pool.connection import (
    GuardedAsyncConnection,
    GuardedConnection,
)
from poolguard.integrations.psycopg_pool.pool import GuardedConnectionPool
from poolguard.integrations.psycopg_pool.pool_async import GuardedAsyncConnectionPool

__all__ = [
    "GuardedAsyncConnection",
    "GuardedAsyncConnectionPool",
    "GuardedConnection",
    "GuardedConnectionPool",
]
