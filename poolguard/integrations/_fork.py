"""After ``fork()``: a child starts with empty pools of its own (gunicorn/uWSGI ``--preload``,
``multiprocessing`` with the fork start method, Celery's prefork pool).

A pool created before the fork is copied into the child with its idle connections, whose
sockets the child now shares with the parent (and with every sibling). SQLAlchemy leaves this to
the application (its docs, "Using Connection Pools with Multiprocessing or os.fork()": call
``engine.dispose(close=False)`` in the child); measured with gunicorn ``--preload`` and 2 workers,
each worker's first checkout took the master's idle connection (same ``pg_backend_pid()``), so
two workers talked over one socket. poolguard does it for the user: every guarded engine is
tracked here (weakly), and an ``os.register_at_fork(after_in_child=...)`` hook disposes each one
with ``close=False``. The child forgets the parent's connections without closing them: closing
would end the parent's sessions (PyMySQL sends COM_QUIT, libpq a Terminate message); when they
are garbage collected in the child, psycopg skips ``PQfinish`` in a process other than the one
that connected, and closing a socket's file descriptor in the child leaves the parent's open.

What else a fork leaves behind, and where it is handled:

- threads do not survive a fork: the backstop watchdog forgets its parent's tickets and starts a
  fresh thread at the child's first armed deadline (``backstop._forget_after_fork``);
- locks held by another thread at the fork stay held forever in the child: the new pool comes
  with a new fair queue (and its lock); the engine's retry budget, breaker and stats locks are
  replaced here (:func:`_fresh_locks`), their counters kept;
- redis-py pools reset themselves in the child (``ConnectionPool._checkpid``, called by every
  checkout; poolguard's pools keep that call); their Guard's locks are replaced here too;
- the native psycopg_pool pools are *not* reset: psycopg_pool runs worker threads and has no
  fork support. Open them in each worker (``open=False``, then ``pool.open()`` in gunicorn's
  ``post_fork``), see docs/frameworks.md.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

__all__ = ["track_engine", "track_guard"]

log = logging.getLogger("poolguard.fork")

_engines: weakref.WeakSet[Any] = weakref.WeakSet()
"""Guarded sync engines (an AsyncEngine's ``sync_engine``): disposed with close=False."""
_guards: weakref.WeakSet[Any] = weakref.WeakSet()
"""Core Guards of the pools whose own pool resets itself (redis-py): only their locks."""

#: The lock type (``threading.Lock`` is a factory function, not a class).
_LockType = type(threading.Lock())


def track_engine(engine: Any) -> None:
    """Reset ``engine`` (a sync SQLAlchemy Engine) in every forked child."""
    _engines.add(engine)


def track_guard(guard: Any) -> None:
    """Replace the locks of ``guard`` (a core Guard) in every forked child."""
    _guards.add(guard)


def _fresh_locks(guard: Any) -> None:
    """New locks for a Guard's budget, breaker and stats: one another thread held at the fork
    would never be released in the child. Counters and state are kept."""
    for name in ("budget", "breaker", "stats"):
        part: Any = getattr(guard, name, None)
        if isinstance(getattr(part, "_lock", None), _LockType):
            part._lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Runs in the child right after fork(), in the thread that forked, before anything else:
    # nothing may raise out of here (os.register_at_fork would print it and carry on), so one
    # engine's failure must not leave the others sharing sockets.
    for engine in list(_engines):
        try:
            state = getattr(engine.pool, "_guard_state", None)
            if state is not None:
                _fresh_locks(state.guard)
            engine.dispose(close=False)
        except Exception:
            log.exception("poolguard: resetting an engine's pool after fork failed")
    for guard in list(_guards):
        try:
            _fresh_locks(guard)
        except Exception:
            log.exception("poolguard: resetting a pool's locks after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
