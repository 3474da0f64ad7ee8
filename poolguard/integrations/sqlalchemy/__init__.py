"""SQLAlchemy integration: guarded engines (sync + asyncio psycopg) and run_transaction."""

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
