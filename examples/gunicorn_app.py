"""A WSGI app served by gunicorn with ``--preload``: the engine is made before the fork.

    DATABASE_URL=postgres://app:secret@localhost/app REDIS_URL=redis://localhost:6379/0 \
    POOLGUARD_QUERY_TIMEOUT=2s \
    gunicorn --preload -w 4 -k gthread --threads 8 --pythonpath examples gunicorn_app:app

With ``--preload`` gunicorn imports this module once, in the master, and forks the workers
from it: the engine, the Redis client and the connections they opened at import are copied into
every worker. Two processes reading replies from one socket corrupt both, so poolguard resets its
engines in each forked child (``engine.dispose(close=False)``, as SQLAlchemy documents for
``os.fork()``: the child forgets the parent's connections without closing them, which would end
the parent's sessions) and the backstop watchdog thread starts again there. redis-py does the
same for its pools by itself (``ConnectionPool._checkpid``). Nothing to add to this app: no
``post_fork`` hook, no ``engine.dispose()`` call.

The endpoints say which server session served them, so a test can check that no worker uses
the master's connection or a sibling's (tests/integration/frameworks/test_gunicorn.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import text

import poolguard
import poolguard.redis

engine = poolguard.create_engine()  # DATABASE_URL + POOLGUARD_* from the environment
cache = poolguard.redis.from_url()  # REDIS_URL

# What apps do at import: check the database and the cache (here: note the sessions used, so
# that the workers can be compared with them). The connections stay idle in the pools.
#: The server's id of the session serving a statement (PostgreSQL or MySQL/MariaDB).
SESSION_ID = text(
    "SELECT pg_backend_pid()" if engine.dialect.name == "postgresql" else "SELECT CONNECTION_ID()"
)
with engine.connect() as conn:
    MASTER_BACKEND = conn.execute(SESSION_ID).scalar_one()
MASTER_REDIS_CLIENT = cache.client_id()
MASTER_PID = os.getpid()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _backend() -> dict[str, Any]:
    """A read: which PostgreSQL session (and Redis connection) served this request."""
    with engine.connect() as conn:
        backend = conn.execute(SESSION_ID).scalar_one()
    return {
        "worker": os.getpid(),
        "backend": backend,
        "redis_client": cache.client_id(),
        "master": MASTER_PID,
        "master_backend": MASTER_BACKEND,
        "master_redis_client": MASTER_REDIS_CLIENT,
    }


def _stalled() -> dict[str, Any]:
    """A statement the server never bounds (``statement_timeout`` 0 for this transaction): only
    the client backstop (POOLGUARD_QUERY_TIMEOUT plus a grace) can end it. PostgreSQL only."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("SELECT pg_sleep(10)"))
    except poolguard.QueryTimeout as exc:
        return {"worker": os.getpid(), "outcome": "backstop", "error": type(exc).__name__}
    return {"worker": os.getpid(), "outcome": "completed"}


ROUTES: dict[str, Callable[[], dict[str, Any]]] = {"/backend": _backend, "/stall": _stalled}


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    body = json.dumps(route()).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
