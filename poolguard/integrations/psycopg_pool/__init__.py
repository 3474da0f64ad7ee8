"""Native psycopg 3 pools (sync + asyncio) built on psycopg_pool, guarded by poolguard.

Public entry points live in :mod:`poolguard.postgres` (``create_pool``, ``create_async_pool``).
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
