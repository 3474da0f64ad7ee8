"""Guarded Redis Cluster: a real ``redis.cluster.RedisCluster`` whose commands go through the Guard.

Built by :func:`build_cluster_client` for ``poolguard.redis.cluster_from_url()``; the asyncio
twin is ``cluster_async.py`` (redis-py's two cluster clients differ in structure: per-node
``Redis`` + ``ConnectionPool`` here, ``ClusterNode`` connection lists there, so the two are
written by hand; the decisions they share are ``_cluster.py``).

Hook points (redis-py 8.1):

- ``RedisCluster.retry`` is ``Retry(NoBackoff(), 0)``: ``_internal_execute_command`` makes one
  attempt (following MOVED/ASK/TRYAGAIN inside it, refreshing the slot table on errors) and
  :meth:`GuardedRedisCluster.execute_command` runs it under ``Guard.run_with``.
- Node connections are :class:`GuardedClusterConnection`: connect failures are tagged (nothing
  was sent), and a completed send sets the attempt's :class:`~._cluster.SentMark`.
- The NodesManager's topology refresh (CLUSTER SLOTS) runs with the mark suspended.
- :class:`GuardedClusterPipeline` replays the whole pipeline only when safe, and stops redis-py's
  own per-command re-send of commands whose reply was lost.
"""

# redis-py's internals carry no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import inspect
import queue
from typing import Any

import redis.cluster
import redis.connection
import redis.exceptions as rex

from poolguard.backends import redis as backend
from poolguard.config.settings import Settings
from poolguard.core.retry import Attempts, Guard
from poolguard.errors import PoolguardError
from poolguard.integrations.redis import _cluster as cl
from poolguard.integrations.redis import _common as c

__all__ = [
    "GuardedClusterConnection",
    "GuardedClusterPipeline",
    "GuardedNodePool",
    "GuardedRedisCluster",
    "build_cluster_client",
    "cluster_policy",
]

_lookup = backend.lookup


# -- policy -----------------------------------------------------------------------------------


def cluster_policy(
    settings: Settings, label: str, target: str, gauges: Any, hooks: Any = None
) -> c.Policy:
    """The client's Policy: one Guard for the whole cluster, with the cluster classifier."""
    from poolguard.integrations._fork import track_guard

    def make_error(g: Any) -> BaseException:
        if g.classification.reason in cl.RECONFIGURING | {"slot_not_covered"}:
            # Still reconfiguring when the window ended: the node's own reply is the error
            # (ClusterDownError, TryAgainError ...), not a "cannot connect" headline.
            from poolguard.core.retry import default_error

            return default_error(g)
        return c.give_up_error(g, label)

    guard = Guard.from_settings(
        settings,
        name=settings.name or "redis",
        backend="redis",
        classify=cl.classify,
        make_error=make_error,
        hooks=hooks,
        gauges=gauges,
        target=target,
        counts_connect_failures=False,  # counted by the node connections
    )
    track_guard(guard)
    return c.Policy(guard, settings, label, first_guard=c.first_contact_guard(guard))


# -- node connections -------------------------------------------------------------------------


class GuardedClusterConnection(redis.connection.Connection):
    """A node connection: connect failures tagged and counted, completed sends marked.

    Subclassed per client with ``guard_policy`` set (redis-py builds node connections from
    keyword arguments it filters, so the policy rides on the class)."""

    guard_policy: c.Policy

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock:
            return
        with cl.connecting(self):
            super().connect_check_health(check_health, retry_socket_connect)

    #: The next replies' read timeout (``_cluster.read_timeout``), set at each send.
    guard_next_read: Any = cl.KEEP

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.guard_next_read = cl.read_timeout(self.socket_timeout, args)
        super().send_command(*args, **kwargs)

    def pack_commands(self, commands: Any) -> Any:
        self.guard_next_read = cl.batch_read_timeout(self.socket_timeout)  # a pipeline
        return super().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:  # connected first: a connect failure is not a send that began
            self.connect_check_health(check_health=False)
        cl.mark_send_started()
        try:
            super().send_packed_command(command, check_health)
        except (TypeError, AttributeError) as exc:
            # Not marked sent (a pipeline counts it as begun: see pipeline_attempt).
            _raise_closed_underneath(self, exc, "sent")
            raise
        cl.mark_sent()

    def can_read(self, timeout: float = 0) -> bool:
        try:
            return bool(super().can_read(timeout))
        except (TypeError, AttributeError) as exc:
            # The pool's checkout poll: the pool answers a ConnectionError by reconnecting
            # (seen once in a resharding test under load: hiredis's TypeError from poll(None)).
            _raise_closed_underneath(self, exc, "polled")
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._guarded_read(*args, **kwargs)
        except (TypeError, AttributeError) as exc:
            # The command was sent: a lost reply, which the retry rule decides on (seen in the
            # floor matrix cell during CLUSTER FAILOVER: redis-py 7.2's hiredis parser fed a
            # reader another thread had just cleared, AttributeError 'NoneType' ... 'feed';
            # redis-py 8 checks for this itself and raises ConnectionError).
            _raise_closed_underneath(self, exc, "read")
            raise

    def _guarded_read(self, *args: Any, **kwargs: Any) -> Any:
        pending = self.guard_next_read
        if pending is cl.KEEP or "timeout" in kwargs:
            return super().read_response(*args, **kwargs)
        if _READ_TAKES_TIMEOUT:
            kwargs["timeout"] = pending  # None: a blocking command that may wait forever
            return super().read_response(*args, **kwargs)
        # redis-py 7.2: no per-read timeout; the socket's own is lent for this read (its
        # timeout was set once, at connect) and given back unless the read closed it.
        sock = self._sock
        if sock is None:  # pragma: no cover - a read follows a send, which connects
            return super().read_response(*args, **kwargs)
        sock.settimeout(pending)
        try:
            return super().read_response(*args, **kwargs)
        finally:
            if self._sock is sock:
                sock.settimeout(self.socket_timeout)


def _raise_closed_underneath(conn: Any, exc: Exception, doing: str) -> None:
    """A connection another thread closed while this one was using it: a ConnectionError.

    redis-py's sync cluster disconnects node connections other threads may be using (a topology
    refresh after a failover or MOVED), and ``disconnect()`` clears the parser's socket (and
    hiredis's reader) before the connection's own, without a lock. A send, poll or read in
    between dies with a TypeError or AttributeError on those None attributes. That is a closed
    connection, as redis-py 8's own checks report it. The test is "closed now": redis-py's send
    and read close the connection on any error themselves, so a bug there would be called a lost
    connection too (chained, and then only retried when the rule allows); the poll does not."""
    if conn._sock is None or getattr(conn._parser, "_sock", None) is None:
        raise rex.ConnectionError(
            f"connection closed by another thread while it was {doing}"
        ) from exc


class GuardedNodePool(redis.connection.BlockingConnectionPool):
    """A node's pool: redis-py's blocking pool, minus its disconnect of connections in use.

    redis-py's cluster disconnects a node's free connections after any connection error to it
    and at every topology refresh (``disconnect_free_connections``), from the failing thread:
    it snapshots the free queue, then disconnects. ``get_connection`` takes from that queue
    without the pool's lock, so a connection another thread took in between was closed under
    it mid-send or mid-read (redis-py 7.2 and 8.1 alike; seen as a GET failing during
    CLUSTER FAILOVER). Here the free connections are taken out of the queue first: each is
    either disconnected while no thread holds it, or already held and left alone."""

    def disconnect_free_connections(self, moving_address_src: str | None = None) -> None:
        taken: list[Any] = []
        with self._get_pool_lock():
            try:
                while True:
                    taken.append(self.pool.get_nowait())
            except queue.Empty:
                pass
            try:
                for conn in taken:
                    if conn is not None and self._should_update_connection(
                        conn, "connected_address", moving_address_src
                    ):
                        conn.disconnect()
            finally:
                for conn in reversed(taken):  # back in their LIFO order
                    self.pool.put_nowait(conn)


#: redis-py >= 8 reads with ``read_response(timeout=...)``; 7.2's takes no timeout.
_READ_TAKES_TIMEOUT = (
    "timeout" in inspect.signature(redis.connection.Connection.read_response).parameters
)


# -- client -----------------------------------------------------------------------------------


class _GuardedNodesManager(redis.cluster.NodesManager):
    """redis-py's NodesManager whose topology refresh is not mistaken for the command."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        # redis-py refreshes inside its error handler: with the caller's deadline spent the
        # refresh could only fail, and its "cannot be connected" would replace the real error
        # (and count as a cluster outage). The next command refreshes instead. The same when
        # the deadline runs out *during* the refresh (a read that timed out at query_timeout
        # leaves it the rest; on a loaded machine, reconnecting to a node may not fit).
        if cl.deadline_spent():
            return
        try:
            with cl.sent_suspended():
                super().initialize(*args, **kwargs)
        except Exception:
            if not cl.deadline_spent():
                raise


_EMIT_ERROR: Any = getattr(redis.cluster.RedisCluster, "_emit_on_error_event", None)
_EMIT_AFTER: Any = getattr(redis.cluster.RedisCluster, "_emit_after_command_execution_event", None)


class GuardedRedisCluster(cl.GuardedClientMixin, redis.cluster.RedisCluster):
    """A ``redis.cluster.RedisCluster`` whose commands are retried by poolguard, only when safe."""

    # redis-py 7.2 only (8.x records its metrics elsewhere and never calls these): its error
    # handlers pass the failed command's connection, None when none was obtained (a node that
    # refuses connections during a failover), and read ``connection.host``: the AttributeError
    # replaced the ConnectionError poolguard retries. Without a connection, nothing is recorded.
    def _emit_on_error_event(self, error: Any, connection: Any, *args: Any, **kw: Any) -> None:
        if connection is not None and _EMIT_ERROR is not None:
            _EMIT_ERROR(self, error, connection, *args, **kw)

    def _emit_after_command_execution_event(self, *args: Any, **kw: Any) -> None:
        if kw.get("connection") is not None and _EMIT_AFTER is not None:
            _EMIT_AFTER(self, *args, **kw)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        info = _lookup(args[0]) or backend.command_info(args)
        forced = c.override()
        guard = self.guard_policy.entry_guard

        def attempt(attempts: Attempts) -> Any:
            with cl.command_attempt(attempts, info, forced, args):
                # kwargs are popped from by redis-py (target_nodes, keys): a copy per try.
                return self._internal_execute_command(*args, **dict(kwargs))

        try:
            return guard.run_with(attempt, c.NOT_SENT[False], timeout_error=c.QueryTimeoutError)
        except PoolguardError as exc:
            c.raise_own(exc)

    def pipeline(
        self, transaction: Any = None, shard_hint: Any = None, *, idempotent: bool | None = None
    ) -> GuardedClusterPipeline:
        """redis-py's cluster pipeline, replayed as a whole only when safe."""
        if shard_hint:
            raise rex.RedisClusterException("shard_hint is deprecated in cluster mode")
        pipe = GuardedClusterPipeline(
            nodes_manager=self.nodes_manager,
            commands_parser=self.commands_parser,
            startup_nodes=self.nodes_manager.startup_nodes,
            result_callbacks=self.result_callbacks,
            cluster_response_callbacks=self.cluster_response_callbacks,
            read_from_replicas=self.read_from_replicas,
            load_balancing_strategy=self.load_balancing_strategy,
            reinitialize_steps=self.reinitialize_steps,
            retry=cl.no_retry(),
            lock=self._lock,
            transaction=transaction,
            event_dispatcher=self._event_dispatcher,
        )
        pipe.guard_client = self
        pipe.guard_idempotent = idempotent
        return pipe

    def guard_gauges(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for node in list(self.nodes_manager.nodes_cache.values()):
            pool = getattr(node.redis_connection, "connection_pool", None)
            if pool is None:
                continue
            created = [x for x in getattr(pool, "_connections", ()) if x is not None]
            queue = getattr(pool, "pool", None)
            idle = sum(1 for x in list(queue.queue) if x is not None) if queue else 0
            connected = sum(1 for x in created if x._sock is not None)
            nodes[node.name] = cl.node_gauges(node.server_type, connected, len(created), idle)
        return cl.cluster_gauges(nodes)


class GuardedClusterPipeline(redis.cluster.ClusterPipeline):
    """All-or-nothing replay across slots: the whole pipeline is re-run only when every command
    is idempotent (or the caller vouches), or when none of it may have run.

    redis-py re-sends, one by one, the commands of a pipeline whose node answered MOVED/ASK/
    TRYAGAIN (safe: they did not run) *and* those whose reply was lost (not safe for INCR): the
    second kind is stopped here (:meth:`_guard_resend`) unless idempotent.
    """

    guard_client: GuardedRedisCluster
    guard_idempotent: bool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parent_execute_command = self._guard_resend
        self._guard_forced: bool | None = None

    def _guard_resend(self, *args: Any, **options: Any) -> Any:
        for cmd in self._execution_strategy.command_queue:
            if cmd.args == args and isinstance(cmd.result, BaseException):
                result = cmd.result
                break
        else:  # pragma: no cover - redis-py resends only commands of this pipeline
            result = None
        lost = isinstance(result, rex.ConnectionError | rex.TimeoutError)
        if lost and result is not None and not backend.is_connect_phase(result):
            forced = self._guard_forced
            idem = backend.is_idempotent(args) if forced is None else forced
            if not idem:
                raise result  # may have run: not re-sent (redis-py would)
        return self.guard_client.execute_command(*args, **options)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        strategy: Any = self._execution_strategy
        saved = list(strategy.command_queue)
        if not saved:
            return []
        stack = [(cmd.args, cmd.options) for cmd in saved]
        forced, idem = cl.pipeline_plan(self.guard_idempotent, stack)
        self._guard_forced = forced
        transactional = isinstance(strategy, redis.cluster.TransactionStrategy)
        guard = self.guard_client.guard_policy.entry_guard

        def attempt(attempts: Attempts) -> list[Any]:
            commands = [
                redis.cluster.PipelineCommand(args, dict(options), i)
                for i, (args, options) in enumerate(stack)
            ]
            strategy.command_queue = commands
            with cl.pipeline_attempt(attempts, idem, transactional, commands):
                return list(super(GuardedClusterPipeline, self).execute(raise_on_error))

        try:
            return guard.run_with(attempt, c.NOT_SENT[False], timeout_error=c.QueryTimeoutError)
        except PoolguardError as exc:
            c.raise_own(exc)
        finally:
            strategy.command_queue = []


# -- builder ----------------------------------------------------------------------------------


def cluster_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments (per node) that implement the settings."""
    kwargs = c.pool_kwargs(settings, unix=False)
    kwargs.pop("retry", None)  # per node, redis-py sets Retry(NoBackoff(), 0) itself
    kwargs.pop("health_check_interval", None)
    return kwargs


def build_cluster_client(
    settings: Settings,
    redis_kwargs: dict[str, Any],
    hooks: Any = None,
    *,
    asyncio: bool = False,
) -> Any:
    """A guarded cluster client for ``settings.url`` (any node of the cluster)."""
    from poolguard.config.address import address_of
    from poolguard.config.urls import redact

    url = settings.redis_url()
    kwargs = cluster_kwargs(settings)
    kwargs.update(redis_kwargs)
    label = f"redis cluster {settings.name or 'redis'!r} ({redact(url)})"
    target = f"the Redis Cluster (via {address_of(url)})"
    holder: list[Any] = []
    client: Any
    policy = cluster_policy(settings, label, target, lambda: holder[0].guard_gauges(), hooks)
    if asyncio:
        from poolguard.integrations.redis import cluster_async

        client = cluster_async.build(url, policy, kwargs)
    else:
        client = _build_sync(url, policy, kwargs)
    holder.append(client)
    client.guard_policy = policy
    return client


def _build_sync(url: str, policy: c.Policy, kwargs: dict[str, Any]) -> GuardedRedisCluster:
    from redis.connection import parse_url

    ssl = bool(kwargs.pop("ssl", False)) or parse_url(url).get("connection_class") is (
        redis.connection.SSLConnection
    )
    kwargs["connection_class"] = cl.guarded_class(
        GuardedClusterConnection, policy, redis.connection.SSLConnection if ssl else None
    )
    # A blocking pool per node: a burst waits up to acquire_timeout for a free connection
    # instead of failing at once with MaxConnectionsError.
    kwargs["connection_pool_class"] = GuardedNodePool
    kwargs["timeout"] = kwargs.pop("timeout", policy.settings.acquire_timeout)
    client = GuardedRedisCluster(url=url, retry=cl.no_retry(), poolguard_policy=policy, **kwargs)
    # Built (with its first refresh) inside RedisCluster.__init__, when no command runs yet;
    # later refreshes happen inside commands' attempts and must not count as their send.
    client.nodes_manager.__class__ = _GuardedNodesManager
    client.guard_policy = policy
    return client


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def plain_cluster_url(url: str | None) -> str | None:
    """``redis+cluster://h:p`` → ``redis://h:p`` (the scheme only says "this is a cluster")."""
    if url is None:
        return None
    text = url.strip()
    lowered = text.lower()
    for scheme in CLUSTER_SCHEMES:
        if lowered.startswith(scheme):
            return scheme.replace("+cluster", "") + text[len(scheme) :]
    return text
