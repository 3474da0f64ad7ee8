"""The dialect's first-connect queries, bounded like the connect itself.

SQLAlchemy runs ``dialect.initialize()`` on an engine's first connection (``select
pg_catalog.version()``, ``show standard_conforming_strings`` ...) before any ``connect`` listener,
so neither the session-setup backstop (``pool.py``) nor a statement's backstop covers it. A server
that accepts the login but holds queries leaves it waiting forever: PgBouncer under ``PAUSE``
answers the login from its cache and holds every query (measured: a fresh engine's first call
under ``poolguard.deadline(0.5)`` waited for PgBouncer's ``query_wait_timeout``, 120 s by default).
Here ``initialize`` runs under the backstop, and a cut surfaces as :class:`ConnectTimeout`
(connect-phase: retried within the caller's window). Its allowance is twice the connect timeout,
capped by the deadline: the queries are about as many round trips as the handshake (five or six),
so the connect timeout alone, sized for a handshake, cut a healthy first connect over a 200 ms
round-trip link (test_network.py::test_latency_is_tolerated); the query timeout, often seconds,
would leave a server frozen right after the handshake undetected for that long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolguard.core.deadline import effective_timeout
from poolguard.errors import ConnectTimeout

if TYPE_CHECKING:
    from poolguard.integrations.sqlalchemy._state import EngineState

__all__ = ["bound_dialect_initialize"]


def bound_dialect_initialize(dialect: Any, state: EngineState) -> None:
    """Wrap ``dialect.initialize`` (this engine's dialect instance only) in the backstop."""
    from poolguard.integrations.sqlalchemy.pool import guard_io

    original = dialect.initialize
    if getattr(original, "_poolguard_bounded", False):
        return

    def initialize(connection: Any) -> None:
        limit = _allowance(state)
        with guard_io(state, connection.connection, limit) as ticket:
            try:
                original(connection)
            except Exception as exc:
                if ticket is None or not ticket.fired:
                    raise
                raise ConnectTimeout(
                    f"{state.name}: connected to {state.guard.target or 'the server'}, but the"
                    f" dialect's first queries got no reply within {limit:.2f}s (a paused"
                    " PgBouncer, a frozen server or the network down); the connection was"
                    " discarded",
                    hint="raise the connect timeout or the deadline if the server is slow",
                ) from exc

    initialize._poolguard_bounded = True  # type: ignore[attr-defined]
    dialect.initialize = initialize


def _allowance(state: EngineState) -> float | None:
    """Twice the connect timeout, capped by the deadline (None: unbounded)."""
    connect = state.settings.connect_timeout
    if connect is None:
        return state.connect_timeout()  # unbounded but for the deadline (which raises if spent)
    allowance = 2 * connect
    target = state.guard.target
    what = f"connect to {target}" if target else "connect"
    return effective_timeout(allowance, what=what, error=ConnectTimeout)
