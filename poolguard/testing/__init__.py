"""Real local servers, a fault-injecting proxy and a pytest plugin for testing with poolguard.

Names are loaded on first use, so ``import poolguard.testing`` (and the pytest plugin, which
pytest imports in every run) costs nothing and needs no database driver::

    from poolguard.testing import PostgresServer, FaultProxy

    with PostgresServer() as pg, FaultProxy(pg.host, pg.port) as proxy:
        url = proxy.url(pg.url)

Where the names live: ``servers/`` (one launcher per server over ``servers/_base.py``'s
:class:`LocalServer`), ``proxy.py`` (:class:`FaultProxy`, :class:`DeafListener`),
``workload.py`` (:func:`stream_during`) and ``plugin.py`` (the pytest fixtures).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolguard.testing.proxy import DeafListener, FaultProxy
    from poolguard.testing.servers import (
        LocalServer,
        MySQLServer,
        PgBouncerServer,
        PostgresServer,
        RedisServer,
        ServerError,
        ServerStartError,
        ServerUnavailable,
        free_port,
    )
    from poolguard.testing.servers.pg_replication import PgReplicaSet
    from poolguard.testing.servers.redis_cluster import RedisClusterTopology
    from poolguard.testing.workload import StreamResult, stream_during

_WHERE = {
    "DeafListener": "poolguard.testing.proxy",
    "FaultProxy": "poolguard.testing.proxy",
    "LocalServer": "poolguard.testing.servers",
    "MySQLServer": "poolguard.testing.servers",
    "PgBouncerServer": "poolguard.testing.servers",
    "PgReplicaSet": "poolguard.testing.servers.pg_replication",
    "PostgresServer": "poolguard.testing.servers",
    "RedisClusterTopology": "poolguard.testing.servers.redis_cluster",
    "RedisServer": "poolguard.testing.servers",
    "ServerError": "poolguard.testing.servers",
    "ServerStartError": "poolguard.testing.servers",
    "ServerUnavailable": "poolguard.testing.servers",
    "StreamResult": "poolguard.testing.workload",
    "free_port": "poolguard.testing.servers",
    "stream_during": "poolguard.testing.workload",
}

__all__ = [
    "DeafListener",
    "FaultProxy",
    "LocalServer",
    "MySQLServer",
    "PgBouncerServer",
    "PgReplicaSet",
    "PostgresServer",
    "RedisClusterTopology",
    "RedisServer",
    "ServerError",
    "ServerStartError",
    "ServerUnavailable",
    "StreamResult",
    "free_port",
    "stream_during",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'poolguard.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
