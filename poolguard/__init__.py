"""poolguard: resilient connection pools for PostgreSQL, MySQL/MariaDB and Redis.

The whole public API is re-exported here: ``create_engine`` / ``create_async_engine`` and
``run_transaction`` / ``run_transaction_async`` (SQLAlchemy), :mod:`poolguard.postgres`
(psycopg_pool), :mod:`poolguard.mysql` (aiomysql), :mod:`poolguard.redis` (redis-py),
``deadline``, ``stats``, ``reconfigure`` / ``reload_on_sighup`` (live settings changes),
``Hooks``, ``set_testing`` and the error tree of ``errors.py``. The SQLAlchemy names and the
submodules load on first use, so ``import poolguard`` needs no driver.

One folder per layer, each importing only the ones before it: ``core/`` decides (retry safety,
backoff, breaker, budget, deadline; no I/O), ``backends/`` knows each server (error tables,
pings, timeouts), ``integrations/`` wires both into SQLAlchemy, psycopg_pool and redis-py.
Beside them: ``config/`` (settings), ``check/`` (``poolguard check``), ``testing/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolguard._reconfigure import reconfigure, reload_on_sighup
from poolguard._stats import stats
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

if TYPE_CHECKING:
    from poolguard import mysql, postgres, redis
    from poolguard.integrations.sqlalchemy import (
        create_async_engine,
        create_engine,
        run_transaction,
        run_transaction_async,
    )

__version__ = "0.1.0"

# SQLAlchemy-backed names load on first use, so ``import poolguard`` stays cheap.
_LAZY = {
    "create_async_engine": "poolguard.integrations.sqlalchemy",
    "create_engine": "poolguard.integrations.sqlalchemy",
    "run_transaction": "poolguard.integrations.sqlalchemy",
    "run_transaction_async": "poolguard.integrations.sqlalchemy",
}


#: Submodules reachable as attributes (``poolguard.redis.from_url()``), imported on first use.
_SUBMODULES = frozenset({"mysql", "postgres", "redis"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"poolguard.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "create_async_engine",
    "create_engine",
    "deadline",
    "mysql",
    "postgres",
    "reconfigure",
    "redis",
    "reload_on_sighup",
    "run_transaction",
    "run_transaction_async",
    "set_testing",
    "stats",
]
