"""What the sync and asyncio redis-py adapters share: policy, operations, errors, settings.

Nothing here does I/O. The adapters: ``asyncio.py``, and ``sync.py`` generated from it
(``tools/async_to_sync.py``); they differ in ``await`` and in the ``if True:  # ASYNC`` blocks.

:func:`build_policy` makes the per-pool :class:`Policy` (a core ``Guard`` and the timeouts);
the pubsub helpers and the drop-in errors are here too. Which reply or command is safe is
``poolguard/backends/redis.py``; the loop that acts on it is ``poolguard/core/retry.py``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn

import redis.exceptions as rex

from poolguard.backends import redis as backend
from poolguard.config.address import address_of
from poolguard.config.settings import Settings
from poolguard.core.deadline import current_deadline, effective_timeout
from poolguard.core.disposition import Action, Disposition, Operation
from poolguard.core.retry import GiveUp, Guard, RetryPolicy, default_error, error_text
from poolguard.core.stats import Hooks
from poolguard.errors import (
    AmbiguousResultError,
    CircuitOpenError,
    ConfigError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    dropin,
    dropin_class,
)
from poolguard.integrations._fork import track_guard

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
#: A connect that failed for good (refused, unreachable): what redis-py raises, with poolguard's
#: headline (address, last error, attempts, time spent).
CannotConnect: type[PoolguardError] = dropin_class(PoolguardError, rex.ConnectionError)

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


#: Added once to a blocking command's allowance (block time + socket timeout): Redis checks its
#: blocked clients' timeouts on its server cron (every 100 ms at the default ``hz 10``) and a
#: loaded server runs that late, so the empty reply of a 0.4 s BLPOP was seen at 0.5 s. Without
#: this, a small socket timeout (100 ms) cut legitimate blocks at their very end (CI, issue 9).
BLOCK_GRACE = 0.25


def command_timeout(
    configured: float | None, info: backend.CommandInfo, args: Sequence[Any]
) -> float | None:
    """Socket timeout for one command: its block allowance (block + configured + BLOCK_GRACE),
    then capped by the deadline."""
    timeout = configured
    if info.block is not None:
        block = info.block(args)
        if block is not None:
            forever = block == backend.BLOCK_FOREVER or configured is None
            timeout = None if forever else block + configured + BLOCK_GRACE  # type: ignore[operator]
    return deadline_cap(timeout)


def pipeline_timeout(
    configured: float | None, stack: Sequence[tuple[Sequence[Any], Any]]
) -> float | None:
    """The pipeline's socket timeout: every blocking command's allowance, then the deadline."""
    # The common case, no blocking command, is told at C speed (map/all/any run no bytecode per
    # command; the loop below costs ~18 per queued command: 184 of a 10-command pipeline's 718).
    infos = list(map(backend.lookup, map(_FIRST, map(_FIRST, stack))))
    if all(infos) and not any(map(_BLOCK_RULE, infos)):
        timeout = configured
    else:
        timeout = _with_blocking(configured, stack)
    if current_deadline() is None:
        return timeout
    return deadline_cap(timeout)


_FIRST = operator.itemgetter(0)
_BLOCK_RULE = operator.attrgetter("block")


def _with_blocking(
    configured: float | None, stack: Sequence[tuple[Sequence[Any], Any]]
) -> float | None:
    """``configured`` plus every blocking command's allowance (None: may block forever)."""
    timeout = configured
    blocks = False
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
            blocks = True
    # One grace for the whole pipeline: its blocking commands' timers run on the same cron.
    return timeout + BLOCK_GRACE if blocks and timeout is not None else timeout


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


@dataclass(slots=True, eq=False)
class Policy:
    """Everything a guarded pool and its connections need, built once per pool."""

    guard: Guard
    settings: Settings
    label: str
    """Pool name plus redacted address, for messages."""
    first_guard: Guard | None = None
    """The Guard used until the server has answered once (see :func:`first_contact_guard`)."""
    answered: bool = False
    """Set by the first successful connect; never reset."""
    on_answer: list[Callable[[], None]] = field(default_factory=list)
    generation: int = 0
    """Live reconfigurations applied (``poolguard.reconfigure``)."""
    recycle_before: float = 0.0
    """Monotonic: connections born before it have a command timeout (socket timeout) that
    was since reconfigured; the pool replaces them at their next checkout."""

    @property
    def name(self) -> str:
        return self.guard.name

    @property
    def entry_guard(self) -> Guard:
        """The Guard a new operation starts with: cold until the server has answered once."""
        if self.answered or self.first_guard is None:
            return self.guard
        return self.first_guard

    def mark_answered(self) -> None:
        """A connection completed its handshake: from now on connect failures are retried."""
        if self.answered:
            return
        self.answered = True
        for callback in self.on_answer:
            callback()

    def connected(self, started: float, now: float) -> None:
        """A connection of this pool (or cluster) completed its handshake at ``now``."""
        self.guard.stats.incr("connects")
        self.guard.stats.record_create(now - started)
        if not self.answered:
            self.mark_answered()

    def connect_failed(self, exc: BaseException) -> None:
        """Connecting failed: nothing of a command was sent, whatever the error."""
        backend.mark_connect_phase(exc)
        self.guard.stats.incr("connect_failures")

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


def reconfigure_policy(policy: Policy, new: Settings) -> None:
    """Adopt ``new`` (validated by ``poolguard.reconfigure``): the Guards' policies, breaker
    and budget, then the Settings read by each new connection and operation."""
    policy.guard.reconfigure(new)
    first = policy.first_guard
    if first is not None:  # one attempt and no waiting, as built (first_contact_guard)
        first.policy = RetryPolicy(attempts=1, backoff=policy.guard.policy.backoff, timeout=0.0)
    policy.settings = new


@dataclass(eq=False)
class LiveClient:
    """What ``poolguard.reconfigure`` changes on a Redis client: its Policy and its pool."""

    policy: Policy
    pool: Any

    @property
    def name(self) -> str:
        return self.policy.guard.name

    @property
    def settings(self) -> Settings:
        return self.policy.settings

    @property
    def generation(self) -> int:
        return self.policy.generation

    @generation.setter
    def generation(self, value: int) -> None:
        self.policy.generation = value

    def reconfigure(self, new: Settings, changed: frozenset[str]) -> None:
        reconfigure_policy(self.policy, new)
        recycle = "query_timeout" in changed  # each connection's socket timeout
        if recycle:
            self.policy.recycle_before = time.monotonic()
        self.pool.guard_reconfigured(recycle)
        retune = getattr(self.pool, "keepalive_reconfigured", None)
        if "keepalive" in changed and retune is not None:
            retune()  # watched (or not) now, not at the pool's next new connection


def build_guard(
    settings: Settings,
    label: str,
    gauges: Callable[[], dict[str, Any]],
    hooks: Hooks | None = None,
    target: str | None = None,
) -> Guard:
    """The client's Guard; ``target`` (what it connects to, for messages) defaults to the
    URL's ``host:port``."""
    name = settings.name or "redis"
    if target is None and settings.url:
        target = address_of(settings.url)

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
        target=target,
        counts_connect_failures=False,  # counted where each connection connects
    )


def first_contact_guard(guard: Guard) -> Guard:
    """The Guard of a pool whose server has never answered: one attempt, no waiting.

    redis-py fails at once when nothing listens; riding out a *restart* (retrying connects for
    the retry window, waiting for the breaker's probe) only makes sense once the server is
    known to exist. Before that, a wrong URL or a server that is not running is reported after
    one connect attempt instead of after the whole retry window (measured 8-9 s before).
    Budget, breaker and stats are the pool's own; a retry window of 0 makes an open breaker
    fail fast instead of parking the caller until its next probe.
    """
    policy = RetryPolicy(attempts=1, backoff=guard.policy.backoff, timeout=0.0)
    return Guard(
        guard.name,
        guard.backend,
        backend.classify,
        policy=policy,
        budget=guard.budget,
        breaker=guard.breaker,
        stats=guard.stats,
        make_error=_first_contact_error(guard.make_error),
        clock=guard.clock,
        rng=guard.rng,
        target=guard.target,
        env_prefix=guard.env_prefix,
        counts_connect_failures=guard.counts_connect_failures,
    )


#: Why a first-contact connect failure was not retried (the give-up message's ending).
FIRST_CONTACT_WHY = "not retried: the server has not answered once since this client was created"


def _first_contact_error(make_error: Callable[[GiveUp], BaseException]) -> Callable[..., Any]:
    """The pool's error factory, saying why a first connect failure was not retried (the core's
    generic "all 1 attempts failed" would suggest raising the retry settings)."""

    def make(g: GiveUp) -> BaseException:
        if g.classification.connect_phase and g.attempts <= 1:
            g = dataclasses.replace(g, why=FIRST_CONTACT_WHY)
        return make_error(g)

    return make


def build_policy(
    settings: Settings,
    label: str,
    gauges: Callable[[], dict[str, Any]],
    hooks: Hooks | None = None,
    target: str | None = None,
) -> Policy:
    guard = build_guard(settings, label, gauges, hooks, target=target)
    # redis-py resets the pool itself in a forked child (_checkpid); the Guard's locks: _fork.py.
    track_guard(guard)
    return Policy(guard, settings, label, first_guard=first_contact_guard(guard))


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
    if g.classification.connect_phase and not isinstance(g.error, PoolguardError):
        # Say what is unreachable, in the driver's words (redis-py's "Error 111 connecting to
        # h:p. Connection refused." / "Timeout connecting to server" names no host).
        message, hint = g.cannot_connect(error_text(g.error))
        timed_out = g.classification.reason == "connect_timeout"
        cls = ConnectTimeoutError if timed_out else CannotConnect
        return cls(message, attempts=g.attempts, history=g.history, hint=hint)
    return default_error(g)


def wrap_circuit(exc: CircuitOpenError) -> BaseException:
    if isinstance(exc, rex.ConnectionError):
        return exc
    return dropin(
        CircuitOpenError,
        rex.ConnectionError,
        exc.message,
        attempts=exc.attempts,
        history=exc.history,
        hint=exc.hint,
    )


def raise_own(exc: PoolguardError) -> NoReturn:
    """Re-raise a poolguard error of the core as :func:`wrap_own` makes it."""
    wrapped = wrap_own(exc)
    if wrapped is exc:
        raise exc
    raise wrapped from exc


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


#: redis-py keywords that configure redis-py's own retry layer. poolguard keeps that layer off
#: (``Retry(NoBackoff(), 0)``) because its Guard is the one retry loop and knows which commands
#: may run twice: values asking for that same "no redis-py retry" are accepted (and dropped),
#: values that would make redis-py re-send commands are refused with the reason.
RETRY_KEYWORDS = ("retry", "retry_on_timeout", "retry_on_error")

_RETRY_HINT = (
    "poolguard already retries what is safe: connection errors before a command was sent, "
    "LOADING/BUSY/MASTERDOWN/TRYAGAIN replies, and lost replies of reads and idempotent writes; "
    "tune it with retry_attempts= / retry_timeout= (POOLGUARD_REDIS_RETRY_*) and vouch for a "
    "command with poolguard.redis.idempotent()"
)


def retry_conflict(name: str, value: Any) -> str | None:
    """Why redis-py's ``name=value`` conflicts with poolguard's retries; None if compatible."""
    if name == "retry":
        if value is None:
            return None
        get_retries = getattr(value, "get_retries", None)
        if get_retries is None:
            return f"retry={value!r} is not a redis.retry.Retry"
        retries = get_retries()
        if retries == 0:
            return None  # exactly what poolguard configures in redis-py
        times = "forever" if retries < 0 else f"up to {retries} time(s)"
        return (
            f"retry=Retry(..., {retries}) would make redis-py re-send a command {times} after a "
            "timeout or a lost reply, even one that may already have run (INCR applied twice); "
            f"for the same number of safe retries pass retry_attempts={max(retries, 0) + 1}"
        )
    if name == "retry_on_timeout":
        if not value:
            return None
        return (
            "retry_on_timeout=True would make redis-py re-send a command whose reply timed "
            "out: a non-idempotent write (INCR, LPUSH, EVAL...) may then be applied twice"
        )
    if name == "retry_on_error":
        if not value:
            return None
        return (
            f"retry_on_error={value!r} would make redis-py re-send commands after those "
            "errors whether or not they may already have run"
        )
    return None


def check_retry_options(options: dict[str, Any], where: str = "") -> None:
    """Refuse conflicting redis-py retry options; drop the compatible ones (poolguard's own
    ``Retry(NoBackoff(), 0)`` is set by :func:`pool_kwargs`). ``where`` names the source."""
    for name in RETRY_KEYWORDS:
        if name not in options:
            continue
        why = retry_conflict(name, options[name])
        if why is not None:
            raise ConfigError(f"{why}{where}; refused ({_RETRY_HINT})", variable=name)
        del options[name]


def check_set_retry(retry: Any) -> None:
    """``client.set_retry(retry)`` / ``pool.set_retry(retry)``: the same rule as ``retry=``."""
    why = retry_conflict("retry", retry)
    if why is not None:
        raise ConfigError(f"set_retry(): {why} ({_RETRY_HINT})", variable="retry")


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(poolguard Settings fields, redis-py keyword arguments) from ``from_url(**overrides)``."""
    from poolguard.config.fields import ENV_FIELDS

    ours = {k: v for k, v in overrides.items() if k in ENV_FIELDS or k in ("url", "name")}
    theirs = {k: v for k, v in overrides.items() if k not in ours}
    check_retry_options(theirs)
    if "connection_pool" in theirs:
        raise ConfigError(
            "connection_pool= cannot be guarded: poolguard builds the pool (bounded, validated, "
            "with its own retry loop); pass pool settings such as pool_size= instead",
            variable="connection_pool",
        )
    return ours, theirs


def pool_timeout_error(label: str, waited: float, size: int) -> BaseException:
    """PoolTimeout (also a redis-py ConnectionError) that says which setting raises the limit."""
    return PoolTimeoutError(
        f"{label}: no connection became free in {waited:.3f}s (all {size} in use)",
        hint=(
            "raise the pool: pool_size= (or max_connections=) in from_url, or "
            "POOLGUARD_REDIS_POOL_SIZE; each pubsub() holds one connection until close(); "
            "or wait longer: acquire_timeout= / POOLGUARD_REDIS_ACQUIRE_TIMEOUT"
        ),
    )


# -- pub/sub ---------------------------------------------------------------------------------

#: A pub/sub reconnect under ``get_message(timeout=t)`` gets ``max(t, floor)`` (never more than
#: the connect timeout): ``get_message()`` polls with ``timeout=0``, yet connecting, the
#: handshake and re-sending SUBSCRIBE take a few round trips.
RECONNECT_FLOOR = 0.25


class SubscriptionLost(PoolguardError):
    """A pub/sub connection dropped: messages published until it is back are lost."""


#: What pub/sub raises by default: also the ``redis.exceptions.ConnectionError`` redis-py raises.
SubscriptionLostError: type[SubscriptionLost] = dropin_class(SubscriptionLost, rex.ConnectionError)


@dataclass(frozen=True, slots=True)
class ResubscribeGap:
    """Handed to ``on_resubscribe``: what was resubscribed and how long nothing was received."""

    channels: tuple[Any, ...]
    patterns: tuple[Any, ...]
    shard_channels: tuple[Any, ...]
    seconds: float
    """From the loss being noticed to SUBSCRIBE being sent again: messages published then are
    lost (Redis pub/sub is at-most-once)."""
    error: BaseException | None
    """What dropped the connection, if known."""


class PubSubState:
    """Loss bookkeeping of one PubSub (the sync and asyncio adapters share it)."""

    __slots__ = ("error", "failures", "lost_at", "previous_delay", "wait")

    def __init__(self) -> None:
        self.lost_at: float | None = None
        self.error: BaseException | None = None
        self.failures = 0
        self.previous_delay: float | None = None
        self.wait: float | None = None
        """The running read's timeout (None: blocking); bounds a reconnect made for it."""

    def lost(self, exc: BaseException | None) -> None:
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            self.error = exc

    def resubscribed(self, pubsub: Any) -> ResubscribeGap:
        now = time.monotonic()
        gap = ResubscribeGap(
            tuple(pubsub.channels),
            tuple(pubsub.patterns),
            tuple(getattr(pubsub, "shard_channels", ())),
            now - (self.lost_at if self.lost_at is not None else now),
            self.error,
        )
        self.lost_at = self.error = self.previous_delay = None
        self.failures = 0
        return gap

    def reconnect_budget(self, connect_timeout: float | None) -> float | None:
        """How long a reconnect made for the running read may take."""
        if self.wait is None:
            return connect_timeout
        budget = max(self.wait, RECONNECT_FLOOR)
        return budget if connect_timeout is None else min(budget, connect_timeout)

    def backoff(self, guard: Guard) -> float:
        """Pause of a blocking ``listen()`` between failed reconnects (opt-in mode)."""
        self.failures += 1
        delay = guard.policy.backoff.delay(self.failures, guard.rng, self.previous_delay)
        self.previous_delay = delay
        return max(delay, 0.01)


def pubsub_dropped(guard: Guard, state: PubSubState, exc: BaseException) -> None:
    """A subscribed connection failed: the gap in delivery starts now."""
    if state.lost_at is None:
        guard.stats.incr("pubsub_drops")
    state.lost(exc)


def pubsub_admit(guard: Guard, budget: float | None) -> float:
    """0.0: reconnect now (maybe as the breaker's probe); else the seconds to wait for the
    breaker's next probe, when that fits the read's ``budget``; CircuitOpenError otherwise.

    A pub/sub reconnect is one attempt: the caller's timeout is what matters, so it waits for a
    probe only inside that timeout (the core loop's rule), and never takes longer. Without the
    wait, the first reads after an outage failed although the probe was due (found with the
    breaker on at its defaults: "next probe in 0.0s").
    """
    wait = guard.breaker.admission()
    if wait is None:
        return 0.0
    if budget is not None and wait < budget:
        guard.stats.incr("breaker_waits")
        return wait
    guard.stats.incr("circuit_open_rejections")
    raise guard.breaker.open_error(guard.breaker.state, wait)


def pubsub_connect_failed(guard: Guard, exc: BaseException) -> None:
    """Tell the breaker what a failed reconnect says about the server."""
    if guard.classify(exc).connect_phase:
        guard.breaker.record_failure()


def is_outage(exc: BaseException) -> bool:
    """A failure opt-in reconnection rides out (transport, connect, breaker, timeouts); auth
    errors and other permanent failures are raised whatever the mode."""
    if isinstance(exc, CircuitOpenError | ConnectTimeout | QueryTimeout):
        return True
    return isinstance(exc, TRANSPORT_ERRORS) and (
        backend.classify(exc).disposition is not Disposition.FAIL
    )


def subscription_lost(
    label: str, exc: BaseException, pubsub: Any, *, reconnecting: bool
) -> BaseException:
    """The ConnectionError pub/sub raises by default, saying what was lost and what comes next."""
    n_channels = len(pubsub.channels) + len(getattr(pubsub, "shard_channels", ()))
    n_patterns = len(pubsub.patterns)
    what = "reconnecting failed" if reconnecting else "the connection was lost"
    return SubscriptionLostError(
        f"{label}: pub/sub {what} ({type(exc).__name__}: {exc}); messages published until it "
        f"is back are lost (at-most-once); the next get_message()/listen() reconnects and "
        f"resubscribes {n_channels} channel(s) and {n_patterns} pattern(s)",
        hint="from_url(..., pubsub_reconnect=True) resubscribes transparently and reports each "
        "gap to on_resubscribe",
    )


def report_resubscribe(
    guard: Guard, label: str, gap: ResubscribeGap, callback: Callable[[ResubscribeGap], Any] | None
) -> None:
    """Make the at-most-once gap visible: a counter, a warning and the caller's callback."""
    from poolguard.logs import pool_fields

    stats = guard.stats
    stats.incr("resubscribes")
    channels = len(gap.channels) + len(gap.shard_channels)
    stats.log.warning(
        "%s: pub/sub resubscribed %d channel(s), %d pattern(s) after %.3fs without a "
        "connection; messages published meanwhile were lost",
        label,
        channels,
        len(gap.patterns),
        gap.seconds,
        extra=pool_fields(
            stats,
            "resubscribe",
            reason="resubscribe",
            channels=channels,
            patterns=len(gap.patterns),
            gap=round(gap.seconds, 3),
        ),
    )
    if callback is not None:
        callback(gap)
