"""Native aiomysql pool guarded by poolguard (public entry point: :mod:`poolguard.mysql`).

``pool.py``: the pool (aiomysql's pool API on aiomysql connections) and the connection class
(the backstop on each request); ``_rules.py``: the decisions. MySQL knowledge is
``poolguard/backends/mysql.py``.
"""

from __future__ import annotations

from poolguard.integrations.aiomysql_pool.pool import GuardedConnection, GuardedPool

__all__ = ["GuardedConnection", "GuardedPool"]
