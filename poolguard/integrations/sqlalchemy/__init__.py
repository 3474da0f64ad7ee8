"""SQLAlchemy integration: guarded engines (sync + asyncio) and run_transaction.

PostgreSQL through psycopg 3, MySQL/MariaDB through PyMySQL or aiomysql. Public names are
re-exported from ``poolguard/__init__.py``. Start at ``engine.py`` (what gets installed where);
then ``pool.py`` (checkout), ``connection.py`` (statement retry), ``transaction.py`` (units of
work), ``_state.py`` (per-engine state) and ``_backend.py`` (per-dialect adapters onto
``poolguard/backends/``).
"""

from __future__ import annotations

from poolguard.integrations.sqlalchemy.engine import (
    create_async_engine,
    create_engine,
    guard_of,
    stats,
)
from poolguard.integrations.sqlalchemy.transaction import run_transaction, run_transaction_async

__all__ = [
    "create_async_engine",
    "create_engine",
    "guard_of",
    "run_transaction",
    "run_transaction_async",
    "stats",
]
