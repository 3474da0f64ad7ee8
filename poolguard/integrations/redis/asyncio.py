"""Guarded redis-py: a real ``redis.asyncio.Redis`` whose commands go through poolguard's Guard.

The hook points, chosen from redis-py 8.1's source:

- ``AsyncGuardedRedis.execute_command`` replaces redis-py's retry wrapper with ``Guard.arun_with``
  (redis-py's own ``Retry`` is disabled: ``Retry(NoBackoff(), 0)``). One attempt = check out a
  connection, send, read. Whether the command *may have reached the server* is known exactly:
  the connection records when ``send_packed_command`` finished (``guard_sent``); a failure before
  that (connect, checkout validation, a send that did not complete) cannot have executed
  anything, because Redis only executes a command once it has received all of it.
- ``AsyncGuardedConnection.connect_check_health`` bounds connecting by the deadline and tags connect
  failures (``backends.redis.mark_connect_phase``) so they count towards the breaker.
- ``AsyncGuardedBlockingConnectionPool`` bounds the acquire wait (deadline-aware ``timeout``), turns
  "No connection available." into ``PoolTimeout`` and, at checkout, retires connections past
  their jittered lifetime or max idle and PINGs (own short timeout) those idle past
  ``validate_idle`` or older than the last transport failure.
- ``AsyncGuardedPipeline.execute`` replays a pipeline only when every command is idempotent (or the
  caller vouches), never after a WATCH, never a partially applied non-transactional pipeline.
- ``AsyncGuardedPubSub`` (``parse_response``/``_execute``): a dropped subscription raises a
  ``ConnectionError`` at once (or, opt-in, is ridden out and reported); a reconnect is one
  attempt bounded by the read's timeout, behind the pool's breaker.

Per-command timeouts (blocking commands, the deadline) are lent for the one command and given back
afterwards (``_LentTimeout``); a connection is owned by one task or thread while checked out, so
this is not shared state. redis-py's asyncio connection reads ``Connection.socket_timeout`` for
every send and read, so the asyncio module sets that attribute; the sync connection gives the socket
its timeout once, at connect, so the sync module calls ``settimeout`` on the socket.

``sync.py`` is generated from ``asyncio.py`` by ``tools/async_to_sync.py`` (``make generate``): edit
``asyncio.py``; ``if True:  # ASYNC`` blocks hold what differs. What the two share (policy,
timeouts, errors, pubsub state) is ``_common.py``; the Redis tables are
``poolguard/backends/redis.py``; clients are built by ``__init__.py`` for :mod:`poolguard.redis`.
"""

# redis-py's internals (execute helpers, parse_url, pools) carry no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import itertools
import select
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.client
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.exceptions as rex

from poolguard.backends import redis as backend
from poolguard.core.deadline import current_deadline, deadline
from poolguard.core.disposition import Disposition
from poolguard.core.retry import Attempts, FirstAttempt, Guard
from poolguard.errors import PoolguardError
from poolguard.integrations._live import live_gauges
from poolguard.integrations.redis import _common as c
from poolguard.integrations.redis._keepalive import AsyncKeepaliveMixin

__all__ = [
    "AsyncGuardedBlockingConnectionPool",
    "AsyncGuardedConnection",
    "AsyncGuardedPipeline",
    "AsyncGuardedPubSub",
    "AsyncGuardedRedis",
    "AsyncGuardedSSLConnection",
    "AsyncGuardedSentinelConnection",
    "AsyncGuardedSentinelPool",
    "AsyncGuardedUnixDomainSocketConnection",
]

_lookup = backend.lookup
_forced = c.override
_deadline = current_deadline
_monotonic = time.monotonic
# redis-py wraps get_connection in a deprecated-arguments check that costs ~0.5 us per call;
# poolguard never passes the deprecated arguments, so it calls the function underneath.
_blocking_get_connection = getattr(
    redis.asyncio.connection.BlockingConnectionPool.get_connection,
    "__wrapped__",
    redis.asyncio.connection.BlockingConnectionPool.get_connection,
)


if True:  # ASYNC

    def _poller(conn: Any) -> Any:
        """A poll object on the connection's socket: one cheap syscall tells "closed by peer"."""
        writer = getattr(conn, "_writer", None)
        sock = writer.get_extra_info("socket") if writer is not None else None
        if sock is None or not hasattr(select, "poll"):
            return None
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return poller


T = TypeVar("T")


async def _retried(
    guard: Guard,
    attempt: Callable[[Any], Awaitable[T]],
    first: FirstAttempt,
    failure: Exception | None,
    started: float | None,
) -> T:
    """The retry loop of one command or pipeline, built only when its first attempt (run by the
    caller after ``Guard.first_attempt``) failed, or could not run now (``started`` None: the
    deadline is spent or the breaker is not closed)."""
    if failure is None or started is None:
        return await guard.arun_with(attempt, first.op, timeout_error=c.QueryTimeoutError)
    if True:  # ASYNC
        return await guard.aresume_with(
            attempt, failure, started, first.op, timeout_error=c.QueryTimeoutError
        )
    else:  # noqa: RET505 (the sync twin's branch)
        return guard.resume_with(
            attempt, failure, started, first.op, timeout_error=c.QueryTimeoutError
        )


class _LentTimeout:
    """A socket timeout lent to one pooled connection for one call, then given back.

    The asyncio connection reads ``socket_timeout`` at every read, so lending is setting that
    attribute; the sync one applied its timeout to the socket once, at connect, so the sync twin
    sets the socket's own and restores the connection's afterwards. ``configured`` may itself be
    None (no query timeout): whether anything was lent is kept apart from it.
    """

    __slots__ = ("configured", "conn", "lent", "sock")

    def __init__(self, conn: Any, timeout: float | None) -> None:
        self.conn = conn
        self.configured = conn.socket_timeout
        self.lent = timeout != self.configured
        self.sock: Any = None
        if True:  # ASYNC
            if self.lent:
                conn.socket_timeout = timeout
        elif self.lent and conn._sock is not None:
            self.sock = conn._sock
            self.sock.settimeout(timeout)

    def give_back(self) -> None:
        """Restore the connection's own timeout (once; later calls do nothing)."""
        if True:  # ASYNC
            if self.lent:
                self.conn.socket_timeout, self.lent = self.configured, False
        else:
            sock, self.sock = self.sock, None
            if sock is not None and self.conn._sock is sock:
                sock.settimeout(self.conn.socket_timeout)


class _AsyncGuardedConnectionMixin:
    """Connect bounded by the deadline, connect failures tagged, send completion recorded."""

    guard_policy: c.Policy
    guard_born: float
    guard_checked: float
    guard_expires: float
    guard_last_used: float
    guard_lent: float
    guard_sent: bool
    if False:  # ASYNC
        _sock: Any
    socket_connect_timeout: float | None
    socket_timeout: float | None

    def _guard_init(self, policy: c.Policy) -> None:
        if True:  # ASYNC
            self.guard_poll: Any = None
        self.guard_policy = policy
        self.guard_born = self.guard_checked = self.guard_last_used = 0.0
        self.guard_lent = 0.0  # when get_connection handed it out (0: in the pool)
        self.guard_expires = float("inf")
        self.guard_sent = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if True:  # ASYNC
            if self.is_connected:  # type: ignore[attr-defined]
                return
        else:
            if self._sock:
                return
        policy = self.guard_policy
        started = time.monotonic()
        if policy.generation:  # poolguard.reconfigure() ran: the command timeout in force now
            self.socket_timeout = policy.settings.query_timeout
        self.socket_connect_timeout = c.connect_timeout(policy.connect_timeout)
        # The handshake (HELLO, AUTH, SELECT, CLIENT SETINFO) is part of connecting (DESIGN:
        # "TCP + TLS + auth"): bounded by the connect timeout and the deadline, not only by the
        # command timeout (a frozen server still accepts TCP connections).
        configured = self.socket_timeout
        handshake = c.handshake_timeout(configured, policy.connect_timeout)
        if True:  # ASYNC  # noqa: SIM114
            self.socket_timeout = handshake
        elif handshake != configured:
            self.socket_timeout = handshake
        try:
            await super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[misc]
        except Exception as exc:
            policy.connect_failed(exc)
            raise
        finally:
            self.socket_connect_timeout = policy.connect_timeout
            if True:  # ASYNC
                self.socket_timeout = configured
            elif handshake != configured:
                self.socket_timeout = configured
                if self._sock is not None:  # socket and parser back to the command timeout
                    self.update_current_socket_timeout(-1)  # type: ignore[attr-defined,unused-ignore]
        now = time.monotonic()
        self.guard_born = self.guard_checked = self.guard_last_used = now
        self.guard_expires = policy.expiry(now)
        if started < policy.recycle_before:
            # poolguard.reconfigure() changed the command timeout while this connect ran (it
            # may have read the old one): born "before" it, so its first checkout replaces it.
            self.guard_born = self.guard_checked = started
        if True:  # ASYNC
            self.guard_poll = _poller(self)
        policy.connected(started, now)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await super().send_packed_command(command, check_health)  # type: ignore[misc]
        self.guard_sent = True


class AsyncGuardedConnection(_AsyncGuardedConnectionMixin, redis.asyncio.connection.Connection):
    def __init__(self, *, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        self._guard_init(poolguard_policy)
        super().__init__(**kwargs)


class AsyncGuardedSSLConnection(
    _AsyncGuardedConnectionMixin, redis.asyncio.connection.SSLConnection
):
    def __init__(self, *, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        self._guard_init(poolguard_policy)
        super().__init__(**kwargs)


class AsyncGuardedUnixDomainSocketConnection(
    _AsyncGuardedConnectionMixin, redis.asyncio.connection.UnixDomainSocketConnection
):
    def __init__(self, *, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        self._guard_init(poolguard_policy)
        super().__init__(**kwargs)


CONNECTION_CLASSES: dict[type[Any], type[Any]] = {
    redis.asyncio.connection.Connection: AsyncGuardedConnection,
    redis.asyncio.connection.SSLConnection: AsyncGuardedSSLConnection,
    redis.asyncio.connection.UnixDomainSocketConnection: AsyncGuardedUnixDomainSocketConnection,
}

AnyConnection = (
    AsyncGuardedConnection | AsyncGuardedSSLConnection | AsyncGuardedUnixDomainSocketConnection
)


class AsyncGuardedBlockingConnectionPool(
    # POOLGUARD_KEEPALIVE (_keepalive.py): registers at the first connection, unregisters at
    # disconnect().
    AsyncKeepaliveMixin,
    redis.asyncio.connection.BlockingConnectionPool,
):
    """Bounded pool: deadline-aware acquire timeout, lifetime/idle eviction, idle validation."""

    def __init__(self, *, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        self.guard_policy = poolguard_policy
        # Until the server has answered once, operations start on the first-contact Guard
        # (one attempt, no breaker wait); the first successful connect swaps in the pool's.
        self.guard_active = poolguard_policy.entry_guard
        poolguard_policy.on_answer.append(self._guard_answered)
        self.guard_suspect_before = 0.0
        # Plain attributes: read on every checkout, so no property or settings lookups.
        self._guard_max_idle = poolguard_policy.max_idle
        self._guard_validate_idle = poolguard_policy.validate_idle
        thresholds = [t for t in (self._guard_max_idle, self._guard_validate_idle) if t is not None]
        self._guard_idle_threshold = min(thresholds, default=float("inf"))
        super().__init__(poolguard_policy=poolguard_policy, **kwargs)

    def _guard_answered(self) -> None:
        self.guard_active = self.guard_policy.guard

    def guard_reconfigured(self, recycle: bool) -> None:
        """``poolguard.reconfigure()`` swapped the policy's settings: re-read the values cached
        here; ``recycle``: the command timeout changed, so connections opened before are
        replaced at their next checkout (its slow path, through ``guard_suspect_before``)."""
        s = self.guard_policy.settings
        self._guard_max_idle = s.max_idle
        self._guard_validate_idle = s.validate_idle
        thresholds = [t for t in (s.max_idle, s.validate_idle) if t is not None]
        self._guard_idle_threshold = min(thresholds, default=float("inf"))
        self.timeout = s.acquire_timeout
        self.connection_kwargs = {
            **self.connection_kwargs,
            "socket_timeout": s.query_timeout,
            "socket_connect_timeout": s.connect_timeout,
        }
        if recycle:
            self.guard_suspect_before = max(self.guard_suspect_before, time.monotonic())

    def set_retry(self, retry: Any) -> None:
        """redis-py's API, for the retry layer poolguard keeps off: a ``Retry`` with 0 retries
        is accepted (it is the one in place); one that re-sends commands is refused."""
        c.check_set_retry(retry)
        self.connection_kwargs["retry"] = retry
        if True:  # ASYNC
            super().set_retry(retry)
        else:
            for conn in list(getattr(self, "_connections", ())):
                conn.retry = retry

    # redis-py reads ``self.timeout`` once per get_connection: make it deadline-aware.
    @property
    def timeout(self) -> float | None:
        if _deadline() is None:
            return self._guard_acquire_timeout
        return c.acquire_timeout(self._guard_acquire_timeout)

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._guard_acquire_timeout = value

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        start = _monotonic()
        try:
            conn = await _blocking_get_connection(self)
        except rex.ConnectionError as exc:
            if str(exc) == backend.ACQUIRE_TIMEOUT_MESSAGE and not backend.is_connect_phase(exc):
                raise self._pool_timeout(start) from exc
            raise
        now = _monotonic()
        self.guard_active.stats.record_wait(now - start)
        conn.guard_lent = now  # for the use time, while an exporter samples it
        if True:  # ASYNC
            if conn.guard_born < start and conn.guard_poll is not None and conn.guard_poll.poll(0):
                # Readable while idle: the peer closed it (CLIENT KILL, restart) and the event
                # loop has not run since, so redis-py's at_eof() check could not see it. Nothing
                # was sent yet: reconnect instead of finding out after sending.
                self.guard_active.stats.evict(
                    "disconnect", now - conn.guard_born, now - conn.guard_last_used
                )
                try:
                    await conn.disconnect()
                    await conn.connect()
                except BaseException:
                    await self.release(conn)
                    raise
                return conn
        # Fresh connections are neither retired nor pinged; the rest only past a threshold.
        if conn.guard_born < start and (
            now - conn.guard_last_used > self._guard_idle_threshold
            or now >= conn.guard_expires
            or conn.guard_checked < self.guard_suspect_before
        ):
            try:
                await self._guard_checkout(conn, now)
            except BaseException:
                await self.release(conn)
                raise
        return conn

    def _pool_timeout(self, start: float) -> BaseException:
        waited = time.monotonic() - start
        self.guard_active.stats.acquire_timeout(waited)
        return c.pool_timeout_error(self.guard_policy.label, waited, self.max_connections)

    async def _guard_checkout(self, conn: AnyConnection, now: float) -> None:
        idle = now - conn.guard_last_used
        if conn.guard_born < self.guard_policy.recycle_before:
            reason = "reconfigured"  # its socket timeout predates poolguard.reconfigure()
        elif now >= conn.guard_expires:
            reason = "lifetime"
        elif self._guard_max_idle is not None and idle > self._guard_max_idle:
            reason = "idle"
        elif (
            self._guard_validate_idle is not None and idle > self._guard_validate_idle
        ) or conn.guard_checked < self.guard_suspect_before:
            if await self._guard_ping(conn):
                conn.guard_checked = now
                return
            reason = "validation"
        else:
            return
        self.guard_active.stats.evict(reason, now - conn.guard_born, idle)
        await conn.disconnect()
        await conn.connect()

    async def _guard_ping(self, conn: AnyConnection) -> bool:
        stats = self.guard_policy.guard.stats
        stats.incr("validations")
        if True:  # ASYNC
            timeout = self.guard_policy.ping_timeout()
            configured = conn.socket_timeout
            conn.socket_timeout = timeout
        else:
            sock = conn._sock
        try:
            if True:  # ASYNC
                await conn.send_command("PING", check_health=False)
                ok = await conn.read_response(timeout=timeout) in (b"PONG", "PONG")
            else:
                sock.settimeout(self.guard_policy.ping_timeout())
                await conn.send_command("PING", check_health=False)
                ok = await conn.read_response() in (b"PONG", "PONG")
        except c.TRANSPORT_ERRORS:
            ok = False
        finally:
            if True:  # ASYNC
                conn.socket_timeout = configured
            else:
                if conn._sock is not None:
                    conn._sock.settimeout(conn.socket_timeout)
        if not ok:
            stats.incr("validation_failures")
        return ok

    async def release(self, connection: Any) -> None:
        connection.guard_last_used = now = _monotonic()
        sink = self.guard_active.stats.sink
        if sink is not None and connection.guard_lent:
            sink.use.append(now - connection.guard_lent)
        connection.guard_lent = 0.0
        await super().release(connection)

    def guard_mark_suspect(self, exc: BaseException) -> None:
        """A transport failure: validate every connection older than now at its next checkout."""
        self.guard_suspect_before = time.monotonic()
        self.guard_policy.guard.stats.disconnect(backend.classify(exc).reason, exc)

    def guard_gauges(self) -> dict[str, Any]:
        policy = self.guard_policy
        if True:  # ASYNC
            idle = len(self._available_connections)
            in_use = len(self._in_use_connections)
            size = idle + in_use
            # Tasks blocked in get_connection wait on the pool's condition (a gauge only).
            waiting = len(getattr(self._condition, "_waiters", None) or ())
        else:
            created = [conn for conn in getattr(self, "_connections", ()) if conn is not None]
            idle = sum(1 for conn in list(self.pool.queue) if conn is not None)
            size = sum(1 for conn in created if conn._sock is not None)
            in_use = len(created) - idle
            # Threads blocked in Queue.get wait on its not_empty condition (CPython internals;
            # a gauge only, so a missing attribute reads as 0).
            waiting = len(getattr(self.pool.not_empty, "_waiters", ()))
        return {
            "size": size,
            "checked_out": in_use,
            "idle": idle,
            "waiting": waiting,
            "max_size": self.max_connections,
            **live_gauges(policy.settings, policy.generation, policy.guard.stats),
        }


class AsyncGuardedRedis(redis.asyncio.Redis):
    """A ``redis.asyncio.Redis`` whose commands are retried by poolguard, and only when safe."""

    #: Defaults of ``pubsub()`` (``async_from_url(pubsub_reconnect=..., on_resubscribe=...)``).
    guard_pubsub_reconnect: bool = False
    guard_on_resubscribe: Callable[[c.ResubscribeGap], Any] | None = None

    def set_retry(self, retry: Any) -> None:
        c.check_set_retry(retry)  # before redis-py stores it in the connection kwargs
        super().set_retry(retry)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if True:  # ASYNC
            if self.single_connection_client:
                await self.initialize()
        # The hot path: one dict get for the command, one ContextVar get for the override.
        info = _lookup(args[0]) or backend.command_info(args)
        # Idempotency matters only after a failure: read the caller's override now (it is
        # context), consult the table later, in the failure path.
        forced = _forced()
        pool: Any = self.connection_pool
        guard = pool.guard_active
        # The first attempt runs without the retry loop (an Attempts object, a closure, one
        # coroutine layer): the loop's own checks and counts, then the call; see _retried.
        first = FirstAttempt(c.NOT_SENT[False])
        failure: Exception | None = None
        started = guard.first_attempt()
        try:
            if started is not None:
                try:
                    result = await self._guard_attempt(first, info, forced, args, options)
                except Exception as exc:
                    failure = exc
                else:
                    guard.breaker.record_success()
                    return result
            # Outside the except block: later attempts' errors must not chain to this one.
            return await _retried(
                guard,
                lambda attempts: self._guard_attempt(attempts, info, forced, args, options),
                first,
                failure,
                started,
            )
        except PoolguardError as exc:
            c.raise_own(exc)

    async def _guard_attempt(
        self,
        attempts: Attempts | FirstAttempt,
        info: backend.CommandInfo,
        forced: bool | None,
        args: Sequence[Any],
        options: dict[str, Any],
    ) -> Any:
        pool: Any = self.connection_pool
        conn: Any = None
        lent: _LentTimeout | None = None
        try:
            conn = self.connection or await pool.get_connection()
            conn.guard_sent = False
            if info.block is not None or _deadline() is not None:
                lent = _LentTimeout(conn, c.command_timeout(conn.socket_timeout, info, args))
            if True:  # ASYNC
                if self.single_connection_client:
                    async with self._single_conn_lock:
                        return await self._send_command_parse_response(
                            conn, args[0], *args, **options
                        )
            elif self._single_connection_client:
                with self.single_connection_lock:
                    return await self._send_command_parse_response(conn, args[0], *args, **options)
            return await self._send_command_parse_response(conn, args[0], *args, **options)
        except BaseException as exc:
            sent = conn is not None and conn.guard_sent
            idem = c.rule_idempotent(info, args) if forced is None else forced
            attempts.op = (c.SENT if sent else c.NOT_SENT)[idem]
            if conn is not None and isinstance(exc, c.TRANSPORT_ERRORS):
                await conn.disconnect(nowait=True)
                pool.guard_mark_suspect(exc)
            c.note_command(exc, args[0])
            raise
        finally:
            if lent is not None:
                lent.give_back()
            if conn is not None and not self.connection:
                await pool.release(conn)

    def pipeline(
        self,
        transaction: bool = True,
        shard_hint: Any = None,
        *,
        idempotent: bool | None = None,
    ) -> AsyncGuardedPipeline:
        """A pipeline; ``idempotent=True`` vouches that the whole batch may be replayed."""
        return AsyncGuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint, idempotent
        )

    def pubsub(
        self,
        *,
        reconnect: bool | None = None,
        on_resubscribe: Callable[[c.ResubscribeGap], Any] | None = None,
        **kwargs: Any,
    ) -> AsyncGuardedPubSub:
        """redis-py's ``pubsub()``; ``reconnect=True`` resubscribes transparently after a drop
        and reports each gap to ``on_resubscribe`` (defaults: ``async_from_url``'s
        ``pubsub_reconnect`` / ``on_resubscribe``)."""
        return AsyncGuardedPubSub(
            self.connection_pool,
            event_dispatcher=self._event_dispatcher,
            reconnect=self.guard_pubsub_reconnect if reconnect is None else reconnect,
            on_resubscribe=on_resubscribe or self.guard_on_resubscribe,
            **kwargs,
        )


class AsyncPipelinePartiallyApplied(rex.ResponseError):
    """A non-transactional pipeline failed part-way; earlier commands ran, so no replay."""


class AsyncGuardedPipeline(redis.asyncio.client.Pipeline):
    """Replayed as a whole only when safe; WATCH and partial application are never replayed."""

    def __init__(
        self,
        connection_pool: Any,
        response_callbacks: Any,
        transaction: bool,
        shard_hint: Any,
        idempotent: bool | None = None,
    ) -> None:
        super().__init__(connection_pool, response_callbacks, transaction, shard_hint)
        self.guard_idempotent = idempotent

    async def reset(self) -> None:  # type: ignore[override]
        conn: Any = self.connection
        if True:  # ASYNC
            if self.watching and conn is not None and not conn.is_connected:
                self.watching = False  # the WATCH died with its socket: UNWATCH would reconnect
        elif self.watching and conn is not None and conn._sock is None:
            self.watching = False  # the WATCH died with its socket: UNWATCH would reconnect
        await super().reset()

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        """WATCH and the reads after it: pinned to one connection, so never retried, but
        bounded by the deadline like every other command."""
        if _deadline() is None:
            return await super().immediate_execute_command(*args, **options)
        conn: Any = self.connection
        if conn is None:
            conn = self.connection = await self.connection_pool.get_connection()
        info = _lookup(args[0]) or backend.command_info(args)
        lent = _LentTimeout(conn, c.command_timeout(conn.socket_timeout, info, args))
        try:
            return await super().immediate_execute_command(*args, **options)
        finally:
            lent.give_back()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if not stack and not self.watching:
            return []
        if self.scripts:
            await self.load_scripts()
        if True:  # ASYNC
            transactional = bool(self.is_transaction or self.explicit_transaction)
        else:
            transactional = bool(self.transaction or self.explicit_transaction)  # type: ignore[truthy-function,unused-ignore]
        watching = self.watching
        # A WATCH lives on one connection: replaying elsewhere would drop the optimistic lock.
        forced = False if watching else self.guard_idempotent
        if forced is None:
            forced = _forced()
        try:
            pool: Any = self.connection_pool
            guard = pool.guard_active
            first = FirstAttempt(c.NOT_SENT[False])  # as in AsyncGuardedRedis.execute_command
            failure: Exception | None = None
            started = guard.first_attempt()
            if started is not None:
                try:
                    response = await self._guard_attempt(
                        first, stack, raise_on_error, transactional, forced, watching
                    )
                except Exception as exc:
                    failure = exc
                else:
                    guard.breaker.record_success()
                    return response
            return await _retried(
                guard,
                lambda attempts: self._guard_attempt(
                    attempts, stack, raise_on_error, transactional, forced, watching
                ),
                first,
                failure,
                started,
            )
        except PoolguardError as exc:
            c.raise_own(exc)
        finally:
            await self.reset()

    async def _guard_attempt(
        self,
        attempts: Attempts | FirstAttempt,
        stack: list[Any],
        raise_on_error: bool,
        transactional: bool,
        forced: bool | None,
        watching: bool,
    ) -> list[Any]:
        pool: Any = self.connection_pool
        conn: Any = self.connection
        lent: _LentTimeout | None = None
        response: list[Any]
        try:
            if conn is None:
                conn = self.connection = await pool.get_connection()
            elif watching and await _watch_connection_lost(conn):
                self.watching = False
                raise rex.WatchError(WATCH_LOST)
            conn.guard_sent = False
            lent = _LentTimeout(conn, c.pipeline_timeout(conn.socket_timeout, stack))
            if transactional:
                response = await self._execute_transaction(conn, stack, False)
            else:
                response = await self._execute_pipeline(conn, stack, False)
        except BaseException as exc:
            if lent is not None:
                lent.give_back()  # before the connection is disconnected or released
            # MULTI..EXEC that was not fully sent never ran (no EXEC arrived). A plain pipeline
            # executes command by command as bytes arrive: any failure may follow a prefix.
            sent = conn is not None and (conn.guard_sent or not transactional)
            idem = c.pipeline_idempotent(forced, stack)
            attempts.op = (c.SENT if sent else c.NOT_SENT)[idem]
            c.note_command(exc, "MULTI/EXEC" if transactional else "the pipeline")
            if conn is not None and isinstance(exc, c.TRANSPORT_ERRORS):
                await conn.disconnect(nowait=True)
                pool.guard_mark_suspect(exc)
                if watching:
                    # The WATCH died with the socket: no UNWATCH (reset() would reconnect).
                    self.watching = False
                    if not conn.guard_sent:
                        raise rex.WatchError(WATCH_LOST) from exc
            if not watching and self.connection is not None:
                self.connection = None  # the next attempt checks out (and validates) afresh
                await pool.release(conn)
            raise
        finally:
            if lent is not None:
                lent.give_back()
        if raise_on_error:
            self._guard_raise_first(stack, response, transactional, forced)
        return response

    def _guard_raise_first(
        self, stack: list[Any], response: list[Any], transactional: bool, forced: bool | None
    ) -> None:
        # Error replies are rare: look for one at C speed first (the loop costs ~12 bytecodes
        # per reply).
        if not any(map(isinstance, response, itertools.repeat(rex.ResponseError))):
            return
        for index, reply in enumerate(response):
            if not isinstance(reply, rex.ResponseError):
                continue
            retryable = backend.classify(reply).disposition is Disposition.RETRY
            applied = any(not isinstance(r, Exception) for r in response)
            if (
                retryable
                and not transactional
                and applied
                and not c.pipeline_idempotent(forced, stack)
            ):
                raise AsyncPipelinePartiallyApplied(
                    f"poolguard: command #{index + 1} of a pipeline was rejected "
                    f"({str(reply).split(' ', 1)[0]}) after earlier commands ran; not replayed "
                    "because it is not idempotent"
                ) from reply
            self.raise_first_error(stack, response)


WATCH_LOST = (
    "the connection holding the WATCH was lost before EXEC was sent: nothing was applied; "
    "retry the optimistic transaction"
)


async def _watch_connection_lost(conn: Any) -> bool:
    """A WATCH lives on one socket: if the server closed it, EXEC must not be sent at all."""
    if True:  # ASYNC
        closed = not conn.is_connected or (
            conn.guard_poll is not None and bool(conn.guard_poll.poll(0))
        )
    else:
        try:
            closed = conn._sock is None or conn.can_read(timeout=0)
        except c.TRANSPORT_ERRORS:
            closed = True
    if closed:
        await conn.disconnect()
    return bool(closed)


class AsyncGuardedPubSub(redis.asyncio.client.PubSub):
    """redis-py's PubSub whose reads honour their timeout and whose drops are never hidden.

    By default a dropped connection raises :class:`~._common.SubscriptionLost` (also the
    ``ConnectionError`` redis-py raises) at once; the next ``get_message()``/``listen()``
    reconnects and resubscribes, as in redis-py. With ``reconnect=True`` the reads ride the
    outage out instead (``get_message`` returns None when its timeout ends, ``listen`` keeps
    waiting) and every resubscription is reported to ``on_resubscribe``. Either way a
    reconnect is one attempt bounded by the read's timeout, behind the pool's breaker, and the
    channels are resubscribed once (redis-py's connect callback).
    """

    def __init__(
        self,
        connection_pool: Any,
        *,
        reconnect: bool = False,
        on_resubscribe: Callable[[c.ResubscribeGap], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.guard_reconnect = reconnect
        self.guard_on_resubscribe = on_resubscribe
        self.guard_state = c.PubSubState()
        super().__init__(connection_pool, **kwargs)

    if True:  # ASYNC

        async def connect(self) -> None:
            conn: Any = self.connection
            if conn is not None and not conn.is_connected:
                await self._guard_reconnect(conn)  # redis-py would reconnect here unbounded
            await super().connect()

    async def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        state = self.guard_state
        state.wait = None if block else timeout
        start = _monotonic()
        try:
            if True:  # ASYNC
                conn: Any = self.connection
                if conn is not None and not conn.is_connected:
                    await self._guard_reconnect(conn)  # before redis-py's own, unbounded reconnect
            return await super().parse_response(block=block, timeout=timeout)
        except c.SubscriptionLost:
            if not self.guard_reconnect:
                raise
            # Opt-in: stay quiet, but never spin: a read that gives up waits out its timeout
            # (or, blocking, a backoff) before the caller's loop asks again.
            pool: Any = self.connection_pool
            guard = pool.guard_active
            pause = state.backoff(guard) if block else (timeout or 0) - (_monotonic() - start)
            if pause > 0:
                await asyncio.sleep(pause)
            return None
        finally:
            state.wait = None  # a reconnect made for a command gets the connect timeout

    async def _execute(self, conn: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        if True:  # ASYNC
            if not conn.is_connected:
                await self._guard_reconnect(conn)
        else:
            if conn._sock is None or conn.should_reconnect():
                await self._guard_reconnect(conn)
        try:
            return await command(*args, **kwargs)
        except c.TRANSPORT_ERRORS as exc:
            await conn.disconnect(nowait=True)  # pub/sub reads use disconnect_on_error=False
            pool: Any = self.connection_pool
            c.pubsub_dropped(pool.guard_active, self.guard_state, exc)
            pool.guard_mark_suspect(exc)
            raise c.subscription_lost(
                pool.guard_policy.label, exc, self, reconnecting=False
            ) from exc

    async def _guard_reconnect(self, conn: Any) -> None:
        """One reconnect (redis-py's connect callback resubscribes), bounded by the read."""
        pool: Any = self.connection_pool
        guard = pool.guard_active
        state = self.guard_state
        state.lost(None)
        budget = state.reconnect_budget(pool.guard_policy.connect_timeout)
        try:
            wait = c.pubsub_admit(guard, budget)
            if wait:
                await asyncio.sleep(wait)  # off the network, inside the read's timeout
                c.pubsub_admit(guard, None)  # the probe is due now, or another caller's runs
            with deadline(None if budget is None else budget - wait):
                await conn.disconnect(nowait=True)
                await conn.connect()
        except c.SubscriptionLost:
            raise  # the resubscription itself failed: already reported
        except Exception as exc:
            c.pubsub_connect_failed(guard, exc)
            if not c.is_outage(exc):
                raise
            label = pool.guard_policy.label
            raise c.subscription_lost(label, exc, self, reconnecting=True) from exc
        guard.breaker.record_success()
        gap = state.resubscribed(self)
        c.report_resubscribe(guard, pool.guard_policy.label, gap, self.guard_on_resubscribe)


class AsyncGuardedSentinelConnection(
    _AsyncGuardedConnectionMixin, redis.asyncio.sentinel.SentinelManagedConnection
):
    """Asks Sentinel for the master at every connect; discovery failures are connect failures."""

    def __init__(self, *, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        self._guard_init(poolguard_policy)
        super().__init__(**kwargs)

    async def connect(self) -> None:
        try:
            await super().connect()
        except Exception as exc:  # MasterNotFoundError, refused master ...: nothing was sent
            backend.mark_connect_phase(exc)
            raise


class AsyncGuardedSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, AsyncGuardedBlockingConnectionPool
):
    """redis-py's Sentinel pool (master discovery, ownership) over poolguard's bounded pool."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        redis.asyncio.sentinel.SentinelConnectionPool.__init__(
            self, service_name, sentinel_manager, **kwargs
        )
