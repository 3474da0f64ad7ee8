"""What the sync and asyncio redis-py adapters share: policy, operations, errors, settings.

Nothing here does I/O. The adapters (``sync.py``, ``asyncio.py``) differ only in ``await``.
"""

from __future__ import annotations

import math
import random
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from poolguard.backends import redis as backend
from poolguard.config.settings import Settings
from poolguard.core.deadline import current_deadline, effective_timeout
from poolguard.core.disposition import Action, Operation
from poolguard.core.retry import GiveUp, Guard, default_error
from poolguard.core.stats import Hooks
from poolguard.errors import (
    AmbiguousResultError,
    CircuitOpenError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    dropin,
    dropin_class,
)

#: Max lifetime is shortened by up to this fraction per connection, so a pool opened at once
#: does not reconnect all at once (psycopg_pool uses -5%..0 as well).
LIFETIME_JITTER = 0.05
#: The validation PING never waits longer than this (nor than the connect timeout).
PING_TIMEOUT_CAP = 1.0
#: TCP keepalive probes after the idle time: interval (s) and count, so a dead peer is found
#: within keepalive + 3 * 5 s even when no command is running.
KEEPALIVE_INTERVAL = 5
KEEPALIVE_PROBES = 3

# Drop-in error classes: poolguard errors that are also what redis-py users already catch.
QueryTimeoutError: type[QueryTimeout] = dropin_class(QueryTimeout, rex.TimeoutError)
ConnectTimeoutError: type[ConnectTimeout] = dropin_class(ConnectTimeout, rex.TimeoutError)
PoolTimeoutError: type[PoolTimeout] = dropin_class(PoolTimeout, rex.ConnectionError)
CircuitOpen: type[CircuitOpenError] = dropin_class(CircuitOpenError, rex.ConnectionError)

#: Errors after which a connection is suspect (and the pool's older connections too).
TRANSPORT_ERRORS = (rex.ConnectionError, rex.TimeoutError, OSError)

# The four operation contexts a single command can be in; built once, never per call.
_OPS = {
    (sent, idem): Operation(idempotent=idem, sent=sent)
    for sent in (False, True)
    for idem in (False, True)
}


def op(*, sent: bool, idempotent: bool) -> Operation:
    return _OPS[sent, idempotent]


#: Hot-path spellings, indexed by ``idempotent`` (a bool is 0 or 1).
NOT_SENT = (_OPS[False, False], _OPS[False, True])
SENT = (_OPS[True, False], _OPS[True, True])


# -- caller's idempotency override -------------------------------------------------------

_override: ContextVar[bool | None] = ContextVar("poolguard_redis_idempotent", default=None)


@contextmanager
def idempotent(value: bool = True) -> Iterator[None]:
    """Vouch (``True``) or deny (``False``) that commands in this block may run twice."""
    token = _override.set(value)
    try:
        yield
    finally:
        _override.reset(token)


def override() -> bool | None:
    return _override.get()


def command_idempotent(info: backend.CommandInfo, args: Sequence[Any]) -> bool:
    forced = _override.get()
    if forced is not None:
        return forced
    rule = info.idempotent
    return rule if rule.__class__ is bool else rule(args)  # type: ignore[operator]


def rule_idempotent(info: backend.CommandInfo, args: Sequence[Any]) -> bool:
    """The table's verdict for one command (the caller's override is checked first)."""
    rule = info.idempotent
    return rule if rule.__class__ is bool else rule(args)  # type: ignore[operator]


def pipeline_idempotent(forced: bool | None, stack: Sequence[tuple[Sequence[Any], Any]]) -> bool:
    """A pipeline may be replayed only when every command may (or the caller vouches)."""
    if forced is not None:
        return forced
    return all(backend.is_idempotent(args) for args, _ in stack)


# -- timeouts ----------------------------------------------------------------------------


def command_timeout(
    configured: float | None, info: backend.CommandInfo, args: Sequence[Any]
) -> float | None:
    """Socket timeout for one command: its block allowance, then capped by the deadline."""
    timeout = configured
    if info.block is not None:
        block = info.block(args)
        if block is not None:
            forever = block == backend.BLOCK_FOREVER or configured is None
            timeout = None if forever else block + configured  # type: ignore[operator]
    return deadline_cap(timeout)


def pipeline_timeout(
    configured: float | None, stack: Sequence[tuple[Sequence[Any], Any]]
) -> float | None:
    """The pipeline's socket timeout: every blocking command's allowance, then the deadline."""
    timeout = configured
    lookup = backend.lookup
    for args, _ in stack:
        info = lookup(args[0]) or backend.command_info(args)
        if info.block is None:
            continue
        block = info.block(args)
        if block is not None:
            if block == backend.BLOCK_FOREVER or timeout is None:
                timeout = None
                break
            timeout += block
    if current_deadline() is None:
        return timeout
    return deadline_cap(timeout)


# The caller's deadline caps each timeout (core ``effective_timeout``); the error raised when the
# deadline is already spent is the redis-py drop-in of the matching poolguard timeout.


def deadline_cap(timeout: float | None) -> float | None:
    return effective_timeout(timeout, what="redis command", error=QueryTimeoutError)


def handshake_timeout(command: float | None, connect: float | None) -> float | None:
    """Read timeout of the connection handshake: the shorter of the command and connect
    timeouts, capped by the deadline."""
    bounds = [t for t in (command, connect) if t is not None]
    timeout = min(bounds) if bounds else None
    return timeout if current_deadline() is None else deadline_cap(timeout)


def connect_timeout(configured: float | None) -> float | None:
    return effective_timeout(configured, what="redis connect", error=ConnectTimeoutError)


def acquire_timeout(configured: float | None) -> float | None:
    return effective_timeout(configured, what="redis connection checkout", error=PoolTimeoutError)


# -- per-pool policy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything a guarded pool and its connections need, built once per pool."""

    guard: Guard
    settings: Settings
    label: str
    """Pool name plus redacted address, for messages."""

    @property
    def connect_timeout(self) -> float | None:
        return self.settings.connect_timeout

    @property
    def validate_idle(self) -> float | None:
        return self.settings.validate_idle

    @property
    def max_idle(self) -> float | None:
        return self.settings.max_idle

    def expiry(self, born: float) -> float:
        lifetime = self.settings.max_lifetime
        if lifetime is None:
            return math.inf
        return born + lifetime * (1.0 - random.random() * LIFETIME_JITTER)

    def ping_timeout(self) -> float:
        cap = PING_TIMEOUT_CAP
        if self.settings.connect_timeout is not None:
            cap = min(cap, self.settings.connect_timeout)
        capped = deadline_cap(cap)
        return cap if capped is None else capped


def build_guard(
    settings: Settings,
    label: str,
    gauges: Callable[[], dict[str, Any]],
    hooks: Hooks | None = None,
) -> Guard:
    name = settings.name or "redis"

    def make_error(g: GiveUp) -> BaseException:
        return give_up_error(g, label)

    return Guard.from_settings(
        settings,
        name=name,
        backend="redis",
        classify=backend.classify,
        make_error=make_error,
        hooks=hooks,
        gauges=gauges,
    )


COMMAND_ATTR = "_poolguard_command"


def note_command(exc: BaseException, name: Any) -> None:
    """Remember which command failed (for the give-up message); failure path only."""
    try:
        if not hasattr(exc, COMMAND_ATTR):
            setattr(exc, COMMAND_ATTR, name.decode() if isinstance(name, bytes) else str(name))
    except AttributeError:  # pragma: no cover
        pass


def give_up_error(g: GiveUp, label: str) -> BaseException:
    """AmbiguousResultError that is also the redis-py error its users catch; else the original."""
    command = getattr(g.error, COMMAND_ATTR, "the command")
    if g.action is Action.AMBIGUOUS:
        foreign = rex.TimeoutError if isinstance(g.error, rex.TimeoutError) else rex.ConnectionError
        what = "timed out" if foreign is rex.TimeoutError else "was lost"
        return dropin(
            AmbiguousResultError,
            foreign,
            f"{label}: the reply to {command} {what} after it was sent "
            f"({g.classification.reason}, attempt {g.attempts}); it may have been applied, "
            f"so it was not retried",
            attempts=g.attempts,
            history=g.history,
            hint="mark it with poolguard.redis.idempotent() only if running it twice is harmless",
        )
    return default_error(g)


def wrap_circuit(exc: CircuitOpenError) -> BaseException:
    if isinstance(exc, rex.ConnectionError):
        return exc
    return dropin(
        CircuitOpenError, rex.ConnectionError, exc.message, attempts=exc.attempts, hint=exc.hint
    )


def wrap_own(exc: PoolguardError) -> BaseException:
    """Make a poolguard error raised by the core also a redis-py error (drop-in rule)."""
    if isinstance(exc, rex.RedisError):
        return exc
    if isinstance(exc, CircuitOpenError):
        return wrap_circuit(exc)
    cls: type[PoolguardError] | None = None
    if isinstance(exc, QueryTimeout):
        cls = QueryTimeoutError
    elif isinstance(exc, PoolTimeout):
        cls = PoolTimeoutError
    elif isinstance(exc, ConnectTimeout):
        cls = ConnectTimeoutError
    if cls is None:
        return exc
    return cls(exc.message, attempts=exc.attempts, history=exc.history, hint=exc.hint)


# -- settings → redis-py keyword arguments -------------------------------------------------


def keepalive_options(idle: float | None) -> dict[int, int]:
    options: dict[int, int] = {}
    if idle is None:
        return options
    for name, value in (
        ("TCP_KEEPIDLE", max(1, int(idle))),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return options


def pool_kwargs(settings: Settings, unix: bool) -> dict[str, Any]:
    """redis-py pool/connection arguments that implement the settings."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "max_connections": settings.pool_size + settings.max_overflow,
        "timeout": settings.acquire_timeout,
        "socket_timeout": settings.query_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        # poolguard's Guard is the one retry loop: redis-py's own retry would resend INCR.
        "retry": Retry(NoBackoff(), 0),
        # Validation is poolguard's (idle window, own short timeout), not redis-py's interval.
        "health_check_interval": 0,
    }
    if not unix:
        kwargs["socket_keepalive"] = settings.tcp_keepalive is not None
        kwargs["socket_keepalive_options"] = keepalive_options(settings.tcp_keepalive)
    return kwargs


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(poolguard Settings fields, redis-py keyword arguments) from ``from_url(**overrides)``."""
    from poolguard.config.fields import ENV_FIELDS

    ours = {k: v for k, v in overrides.items() if k in ENV_FIELDS or k in ("url", "name")}
    theirs = {k: v for k, v in overrides.items() if k not in ours}
    for forbidden in ("retry", "retry_on_timeout", "retry_on_error", "connection_pool"):
        if forbidden in theirs:
            from poolguard.errors import ConfigError

            raise ConfigError(
                f"{forbidden}= is managed by poolguard (its retries are idempotency-aware); "
                "use the POOLGUARD_REDIS_RETRY_* settings instead",
                variable=forbidden,
            )
    return ours, theirs
