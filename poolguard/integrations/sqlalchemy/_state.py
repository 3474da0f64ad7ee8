"""Per-engine state shared by the pool, the Connection subclass and run_transaction.

``EngineState`` is dialect-neutral (PostgreSQL and MySQL engines alike): everything
driver-specific goes through ``state.backend`` (see ``_backend.py``). A guarded pool keeps it as
``pool._guard_state``; per-connection bookkeeping lives on the pool record (see ``pool.py``).
``engine.py`` builds one per engine; the tunables shared by the pool and the Connection
(:data:`BACKSTOP_GRACE`, :data:`VALIDATE_TIMEOUT`, :data:`LIFETIME_JITTER`) are here too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from poolguard.config.settings import Settings
from poolguard.core.deadline import effective_timeout
from poolguard.core.retry import Guard
from poolguard.errors import ConnectTimeout
from poolguard.integrations.sqlalchemy._backend import PostgresBackend, SqlBackend
from poolguard.integrations.sqlalchemy._compat import await_only
from poolguard.integrations.sqlalchemy._keywords import ResetMode

#: Slack added to ``query_timeout`` before the client backstop cuts the socket, so that the
#: server's ``statement_timeout`` (which keeps the connection usable) normally fires first.
BACKSTOP_GRACE = 0.5
#: Upper bound of the checkout validation ping (also bounded by the caller's deadline).
VALIDATE_TIMEOUT = 1.0
#: Max-lifetime jitter: each connection lives ``max_lifetime * uniform(1 - JITTER, 1)``.
LIFETIME_JITTER = 0.10


#: True while a statement-level retry loop runs: a checkout inside it (a retry's fresh
#: connection) is retried by that outer loop, so each connect failure is counted once (breaker,
#: budget) and attempts do not multiply (3 statement attempts x 3 checkout attempts).
in_statement_loop: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "poolguard_in_statement_loop", default=False
)


@functools.cache
def _default_backend() -> SqlBackend:
    return PostgresBackend()


def _greenlet_sleep(seconds: float) -> None:
    # SQLAlchemy's asyncio layer runs our sync code inside a greenlet on the event loop:
    # time.sleep would block the loop, so the backoff awaits through the greenlet bridge.
    await_only(asyncio.sleep(seconds))


def _bounded(s: Settings) -> bool:
    return bool(
        s.query_timeout or s.transaction_timeout or s.idle_in_transaction_timeout or s.lock_timeout
    )


@dataclass
class EngineState:
    """Everything one guarded engine knows: settings, the core Guard, pool-wide marks."""

    settings: Settings
    guard: Guard
    pgbouncer: bool
    is_async: bool
    redacted_url: str
    sleep: Callable[[float], object] = time.sleep
    suspect_before: float = 0.0
    """Wall-clock (``time.time``, like SQLAlchemy's record.starttime): connections opened
    before this are validated at their next checkout (a POOL-scope disconnect was seen)."""
    server_version: int = 0
    """PostgreSQL's numeric version (e.g. 150004), from the first connection."""
    server_info: str = ""
    """MySQL/MariaDB's version string (``10.11.6-MariaDB``): picks the timeout variables."""
    backend: SqlBackend = field(default_factory=_default_backend)
    pool_ref: list[Any] = field(default_factory=list)
    """The current pool (engine.dispose() recreates it); a list so gauges follow it."""
    _uow_guards: dict[Any, Guard] = field(default_factory=dict)
    reset: ResetMode = "rollback"
    """Reset on return (``pool_reset_on_return``): only when a transaction is open."""
    bounded: bool = False
    """Is any statement-level timeout configured? If not (and no deadline is set), statements
    and their ROLLBACKs run without a watchdog ticket: nothing would bound them anyway."""
    built_connect_args: dict[str, Any] = field(default_factory=dict)
    """poolguard's connect arguments as built at creation (from the first settings), baked into
    the engine: a connect after a reconfiguration rewrites them (:meth:`connect_params`)."""
    generation: int = 0
    """Live reconfigurations applied (``poolguard.reconfigure``)."""
    recycle_before: float = 0.0
    """Wall-clock, like ``suspect_before``: connections opened before it carry session settings
    (server-side timeouts) that were since reconfigured; they are replaced at their next
    checkout (:func:`pool._on_checkout`; ``suspect_before`` is moved too, so the checkout
    takes its slow path)."""

    def __post_init__(self) -> None:
        if self.is_async:
            self.sleep = _greenlet_sleep
        self.bounded = _bounded(self.settings)

    def reconfigure(self, new: Settings, changed: frozenset[str]) -> None:
        """Adopt ``new`` (validated by ``poolguard.reconfigure``): the Guard's policy, breaker
        and budget, then the Settings object every later operation reads."""
        from poolguard.integrations._live import SESSION_FIELDS

        self.guard.reconfigure(new)
        self.settings = new
        self.bounded = _bounded(new)
        if changed & SESSION_FIELDS:
            now = time.time()
            self.recycle_before = now
            self.suspect_before = max(self.suspect_before, now)
        if "keepalive" in changed and self.pool_ref:
            retune = getattr(self.pool_ref[0], "keepalive_reconfigured", None)
            if retune is not None:  # the guarded queue pools (no idle set elsewhere)
                retune()

    def refused_live(self) -> dict[str, str]:
        """Settings this engine cannot change live (beyond the ones no pool can)."""
        pool = self.pool_ref[0] if self.pool_ref else None
        # Only the guarded queue pools wait with poolguard's acquire timeout (pool.py).
        if pool is not None and not hasattr(pool, "_pool_timeout"):
            cls = getattr(pool, "_guard_base", None) or type(pool)  # the user's class
            why = f"it has no effect with poolclass={cls.__name__} or a pool= instance"
            return {"acquire_timeout": why}
        return {}

    def connect_params(self, cparams: dict[str, Any]) -> dict[str, Any]:
        """``cparams`` of a connect, with poolguard's part rebuilt from the current settings
        (only after a reconfiguration: until then they are what the engine was built with)."""
        if not self.generation:
            return cparams
        from poolguard.integrations._live import rewrite_params

        current = self.backend.connect_args(self.settings, is_async=self.is_async)
        return rewrite_params(cparams, self.built_connect_args, current)

    @property
    def name(self) -> str:
        return self.guard.name

    def lifetime(self) -> float | None:
        """A jittered max lifetime for one new connection (so they do not expire together)."""
        if not self.settings.max_lifetime:
            return None
        return self.settings.max_lifetime * random.uniform(1.0 - LIFETIME_JITTER, 1.0)

    def local_timeouts_sql(self) -> str | None:
        return self.backend.local_timeouts_sql(self)

    def connect_timeout(self) -> float | None:
        """The connect timeout capped by the deadline (None: unbounded); a spent deadline raises
        ConnectTimeout naming the server, like every other failure to connect."""
        target = self.guard.target
        what = f"connect to {target}" if target else "connect"
        return effective_timeout(self.settings.connect_timeout, what=what, error=ConnectTimeout)
