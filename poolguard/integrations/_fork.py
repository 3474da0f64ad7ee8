"""After ``fork()``: a child starts with empty pools of its own (gunicorn ``--preload``,
``multiprocessing`` with the fork start method, any ``os.fork()``; uWSGI runs these hooks only
with ``py-call-uwsgi-fork-hooks``).

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
- the native pools (``poolguard.postgres.create_pool``) cannot be reset: psycopg_pool keeps
  its connections, locks, scheduler and worker threads in private state and has no fork
  support. Measured: a pool opened before ``fork()`` handed the child the parent's connection
  (same ``pg_backend_pid()``). So a pool that was open at the fork refuses checkouts in the
  child with an error that says what to do (:func:`_refuse_in_child`): open it in each worker
  (``open=False``, then ``pool.open()`` in gunicorn's ``post_fork``), see docs/frameworks.md.
  A pool still unopened at the fork is untouched.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import weakref
from typing import Any

__all__ = ["track_engine", "track_guard", "track_native_pool"]

log = logging.getLogger("poolguard.fork")

_engines: weakref.WeakSet[Any] = weakref.WeakSet()
"""Guarded sync engines (an AsyncEngine's ``sync_engine``): disposed with close=False."""
_guards: weakref.WeakSet[Any] = weakref.WeakSet()
"""Core Guards of the pools whose own pool resets itself (redis-py): only their locks."""

_native_pools: weakref.WeakSet[Any] = weakref.WeakSet()
"""psycopg_pool pools made by poolguard.postgres: refused in a child if open at the fork."""

#: The lock type (``threading.Lock`` is a factory function, not a class).
_LockType = type(threading.Lock())


def track_engine(engine: Any) -> None:
    """Reset ``engine`` (a sync SQLAlchemy Engine) in every forked child."""
    _engines.add(engine)


def track_guard(guard: Any) -> None:
    """Replace the locks of ``guard`` (a core Guard) in every forked child."""
    _guards.add(guard)


def track_native_pool(pool: Any) -> None:
    """Refuse checkouts of ``pool`` (a psycopg_pool pool) in a child forked while it was open."""
    _native_pools.add(pool)


FORKED_POOL_MESSAGE = (
    "{name}: this pool was opened before fork() (gunicorn --preload, multiprocessing...):"
    " in this child process it would hand out the parent's connections, whose sockets the"
    " parent and every sibling share"
)
FORKED_POOL_HINT = (
    "create it with open=False and call pool.open() in each worker (gunicorn: the post_fork"
    " hook), or create it after the fork; see docs/frameworks.md"
)


def _refuse_in_child(pool: Any) -> None:
    """Shadow the pool's lowest checkout step (psycopg_pool's ``_getconn_unchecked``, which
    ``getconn``, ``connection()`` and poolguard's ``fetch*``/``transaction`` all go through) with
    one raising a clear error, in this process only. The parent's connections are forgotten
    (not closed: psycopg skips ``PQfinish`` in a process that did not connect)."""
    from poolguard.errors import PoolguardError, dropin

    try:
        from psycopg_pool import PoolClosed
    except ImportError:  # pragma: no cover - tracked pools are psycopg_pool pools
        return

    def error() -> PoolguardError:
        name = getattr(pool, "name", "pool")
        return dropin(
            PoolguardError,
            PoolClosed,
            FORKED_POOL_MESSAGE.format(name=name),
            hint=FORKED_POOL_HINT,
        )

    if getattr(pool, "closed", True):
        return  # not open at the fork: it opens (workers, connections) in this process
    if inspect.iscoroutinefunction(type(pool)._getconn_unchecked):

        async def refuse_async(*_args: Any, **_kwargs: Any) -> Any:
            raise error()

        pool._getconn_unchecked = refuse_async
    else:

        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise error()

        pool._getconn_unchecked = refuse
    # Forget the parent's connections: without the pool's workers they would never be
    # returned, closed or replaced here anyway.
    idle = getattr(pool, "_pool", None)
    if idle is not None:
        idle.clear()


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
        state = None
        try:
            state = getattr(engine.pool, "_guard_state", None)
            if state is not None:
                _fresh_locks(state.guard)
            engine.dispose(close=False)
        except Exception as exc:
            _failed("resetting an engine's pool", getattr(state, "guard", None), exc)
    for pool in list(_native_pools):
        try:
            _refuse_in_child(pool)
        except Exception as exc:
            _failed(
                "disabling a native pool", getattr(getattr(pool, "_pg", None), "guard", None), exc
            )
    for guard in list(_guards):
        try:
            _fresh_locks(guard)
        except Exception as exc:
            _failed("resetting a pool's locks", guard, exc)


def _failed(what: str, guard: Any, exc: Exception) -> None:
    """Log a reset that raised in the child, with the pool's common log fields when known."""
    from poolguard.core.stats import PoolStats
    from poolguard.logs import pool_fields

    stats = getattr(guard, "stats", None)
    extra: dict[str, Any] = {"event": "fork_reset_failed", "error_type": type(exc).__name__}
    if isinstance(stats, PoolStats):  # this must not raise: it runs in the forked child
        extra = pool_fields(stats, "fork_reset_failed", error_type=type(exc).__name__)
    log.exception("poolguard: %s after fork failed", what, extra=extra)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
