"""Guarded asyncio Redis Cluster: a real ``redis.asyncio.RedisCluster`` run by poolguard's Guard.

The asyncio twin of ``cluster.py`` (same decisions, from ``_cluster.py``). redis-py's asyncio
cluster keeps a connection list per ``ClusterNode`` (no pool object) and refreshes its topology
at the start of the next ``execute_command`` after a failure (``_initialize``), so:

- ``retry=Retry(NoBackoff(), 0)``: one attempt per ``RedisCluster.execute_command``, run under
  ``Guard.arun_with`` by :meth:`AsyncGuardedRedisCluster.execute_command`;
- node connections are :class:`AsyncGuardedClusterConnection` (connect failures tagged, sends
  marked), set on the client's connection kwargs and on the startup nodes built in ``__init__``;
- :meth:`AsyncGuardedRedisCluster.initialize` (the topology refresh) runs with the mark
  suspended;
- redis-py's asyncio pipeline re-sends individually only MOVED/ASK/TRYAGAIN commands (through
  this client's guarded ``execute_command``); :class:`AsyncGuardedClusterPipeline` adds the
  all-or-nothing replay of the whole pipeline.
"""

# redis-py's internals carry no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any

import redis.asyncio.cluster
import redis.asyncio.connection
import redis.exceptions as rex

from poolguard.backends import redis as backend
from poolguard.core.retry import Attempts
from poolguard.errors import PoolguardError
from poolguard.integrations.redis import _cluster as cl
from poolguard.integrations.redis import _common as c

__all__ = [
    "AsyncGuardedClusterConnection",
    "AsyncGuardedClusterPipeline",
    "AsyncGuardedRedisCluster",
    "build",
]

_lookup = backend.lookup


class AsyncGuardedClusterConnection(redis.asyncio.connection.Connection):
    """A node connection: connect failures tagged and counted, completed sends marked, reads
    bounded by the caller's deadline."""

    guard_policy: c.Policy

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        with cl.connecting(self):
            await super().connect_check_health(check_health, retry_socket_connect)

    #: The next replies' read timeout (``_cluster.read_timeout``), set at each send.
    guard_next_read: Any = cl.KEEP

    def pack_command(self, *args: Any) -> Any:
        # redis-py's ClusterNode packs then sends each command: the timeout is decided here.
        self.guard_next_read = cl.read_timeout(self.socket_timeout, args)
        return super().pack_command(*args)

    def pack_commands(self, commands: Any) -> Any:
        self.guard_next_read = cl.batch_read_timeout(self.socket_timeout)  # a pipeline
        return super().pack_commands(commands)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:  # connected first: a connect failure is not a send
            await self.connect_check_health(check_health=False)
        cl.mark_send_started()
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, TypeError) as exc:
            _raise_closed_underneath(self, exc, sent=False)
            raise
        cl.mark_sent()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        pending = self.guard_next_read
        # Lent through the attribute, not ``timeout=``: redis-py's asyncio read_response returns
        # None when an explicit timeout expires (pub/sub polling), leaving the reply unread.
        lend = pending is not cl.KEEP and kwargs.get("timeout") is None
        configured = self.socket_timeout
        if lend:
            self.socket_timeout = pending  # None: a blocking command that may wait forever
        try:
            return await super().read_response(*args, **kwargs)
        except (AttributeError, TypeError) as exc:
            _raise_closed_underneath(self, exc, sent=True)
            raise
        finally:
            if lend:
                self.socket_timeout = configured


def _raise_closed_underneath(conn: Any, exc: Exception, *, sent: bool) -> None:
    """redis-py's asyncio cluster closes every node connection (``aclose()``) on CLUSTERDOWN
    and every ``reinitialize_steps`` MOVED, even those other tasks are using: their stream is
    then None mid-call (seen: ``'NoneType' object has no attribute 'writelines'`` during a
    CLUSTER FAILOVER), or still there over a transport already closed (Python 3.13.0's
    ``writelines`` then raised ``TypeError: 'NoneType' object is not callable``, its write
    handler cleared at connection_lost: nothing sent; seen in the kill-master test). That is
    a lost connection, so the retry rule decides, not a bug."""
    writer = getattr(conn, "_writer", None)
    if (
        writer is None
        or getattr(conn, "_reader", None) is None
        or writer.transport is None
        or writer.transport.is_closing()
    ):
        lost = rex.ConnectionError(f"connection closed by a concurrent topology refresh ({exc})")
        if not sent:
            backend.mark_connect_phase(lost)  # no byte of the command was written
        raise lost from exc


# With a second base mypy compares redis-py's own bases, whose command_info signatures disagree.
class AsyncGuardedRedisCluster(  # type: ignore[misc]
    cl.GuardedClientMixin, redis.asyncio.cluster.RedisCluster
):
    """A ``redis.asyncio.RedisCluster`` whose commands are retried by poolguard, only when safe."""

    async def initialize(self, *args: Any, **kwargs: Any) -> AsyncGuardedRedisCluster:
        try:
            with cl.sent_suspended():  # CLUSTER SLOTS / COMMAND are not the command
                await super().initialize(*args, **kwargs)
        except Exception as exc:
            # redis-py refreshes at the start of the command after a failure (a retry under the
            # caller's deadline): one the deadline cut short is a timeout, not the cluster down.
            # redis-py still wants a refresh (``_initialize``): the next command makes it.
            if cl.deadline_spent():
                raise cl.refresh_cut_short(exc) from exc
            raise
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        info = _lookup(args[0]) or backend.command_info(args)
        forced = c.override()
        guard = self.guard_policy.entry_guard

        async def attempt(attempts: Attempts) -> Any:
            with cl.command_attempt(attempts, info, forced, args):
                return await super(AsyncGuardedRedisCluster, self).execute_command(
                    *args, **dict(kwargs)
                )

        try:
            return await guard.arun_with(
                attempt, c.NOT_SENT[False], timeout_error=c.QueryTimeoutError
            )
        except PoolguardError as exc:
            c.raise_own(exc)

    def pipeline(
        self, transaction: Any = None, shard_hint: Any = None, *, idempotent: bool | None = None
    ) -> AsyncGuardedClusterPipeline:
        """redis-py's cluster pipeline, replayed as a whole only when safe."""
        if shard_hint:
            raise rex.RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py's ClusterPipeline is abstract to mypy only (an attribute set in __init__).
        pipeline_class: Any = AsyncGuardedClusterPipeline
        pipe: AsyncGuardedClusterPipeline = pipeline_class(self, transaction)
        pipe.guard_idempotent = idempotent
        return pipe

    def guard_gauges(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for node in list(self.nodes_manager.nodes_cache.values()):
            created = list(node._connections)
            connected = sum(1 for x in created if x.is_connected)
            idle = len(node._free)
            nodes[node.name] = cl.node_gauges(node.server_type, connected, len(created), idle)
        return cl.cluster_gauges(nodes)


class AsyncGuardedClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    """All-or-nothing replay across slots (see ``cluster.GuardedClusterPipeline``)."""

    guard_idempotent: bool | None = None

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        strategy: Any = self._execution_strategy
        saved = list(strategy._command_queue)
        if not saved:
            return []
        stack = [(cmd.args, cmd.kwargs) for cmd in saved]
        idem = cl.pipeline_plan(self.guard_idempotent, stack)[1]
        transactional = bool(self._transaction)
        client: Any = self.cluster_client
        guard = client.guard_policy.entry_guard

        async def attempt(attempts: Attempts) -> list[Any]:
            commands = [
                redis.asyncio.cluster.PipelineCommand(i, *args, **dict(kwargs))
                for i, (args, kwargs) in enumerate(stack)
            ]
            strategy._command_queue = commands
            with cl.pipeline_attempt(attempts, idem, transactional, commands):
                if client._initialize:
                    await client.initialize()
                return list(await strategy.execute(raise_on_error, allow_redirections))

        try:
            result: list[Any] = await guard.arun_with(
                attempt, c.NOT_SENT[False], timeout_error=c.QueryTimeoutError
            )
            return result
        except PoolguardError as exc:
            c.raise_own(exc)
        finally:
            await self.reset()


def build(url: str, policy: c.Policy, kwargs: dict[str, Any]) -> AsyncGuardedRedisCluster:
    """The asyncio client; ``kwargs`` are redis-py's (poolguard's settings already applied)."""
    kwargs = dict(kwargs)
    kwargs.pop("timeout", None)  # no pool wait in redis-py's asyncio cluster
    client: Any = AsyncGuardedRedisCluster.from_url(
        url, retry=cl.no_retry(), poolguard_policy=policy, **kwargs
    )
    base = client.connection_kwargs.get("connection_class", redis.asyncio.connection.Connection)
    plain = base is redis.asyncio.connection.Connection
    guarded = cl.guarded_class(AsyncGuardedClusterConnection, policy, None if plain else base)
    # Nodes found later are built from these kwargs; the startup nodes already exist.
    client.connection_kwargs["connection_class"] = guarded
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = guarded
    client.guard_policy = policy
    guarded_client: AsyncGuardedRedisCluster = client
    return guarded_client
