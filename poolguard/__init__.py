"""poolguard: resilient connection pools for PostgreSQL, MySQL/MariaDB and Redis."""

from __future__ import annotations

from poolguard.errors import (
    AmbiguousResultError,
    CircuitOpenError,
    ConfigError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "AmbiguousResultError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectTimeout",
    "PoolTimeout",
    "PoolguardError",
    "QueryTimeout",
    "TransactionTimeout",
    "__version__",
]
