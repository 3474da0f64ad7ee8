"""Real PostgreSQL, MariaDB, Redis and PgBouncer servers, started on free loopback ports.

Standard library only: importing this never needs a database driver.

One launcher per server (``postgres.py``, ``mysql.py``, ``redis.py``, ``pgbouncer.py``), each a
subclass of :class:`LocalServer` (``_base.py``: lifecycle, restart, freeze, kill); finding
binaries and free ports is ``_system.py``. ``poolguard/testing/plugin.py`` turns them into
fixtures.
"""

from __future__ import annotations

from poolguard.testing.servers._base import LocalServer, ServerError, ServerStartError
from poolguard.testing.servers._system import ServerUnavailable, free_port
from poolguard.testing.servers.mysql import MySQLServer
from poolguard.testing.servers.pgbouncer import PgBouncerServer
from poolguard.testing.servers.postgres import PostgresServer
from poolguard.testing.servers.redis import RedisServer

__all__ = [
    "LocalServer",
    "MySQLServer",
    "PgBouncerServer",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "ServerStartError",
    "ServerUnavailable",
    "free_port",
]
