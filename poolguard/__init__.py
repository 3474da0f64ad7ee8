"""poolguard: resilient connection pools for PostgreSQL, MySQL/MariaDB and Redis."""

from __future__ import annotations

from poolguard.core import Hooks, deadline, set_testing
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
    "Hooks",
    "PoolTimeout",
    "PoolguardError",
    "QueryTimeout",
    "TransactionTimeout",
    "__version__",
    "deadline",
    "set_testing",
]
