"""What the sync and asyncio Redis Cluster adapters share: error classification, "was it sent",
the node connections' connect bookkeeping, what a failed attempt (command or pipeline) means for
its retry, and the gauges. No I/O here.

redis-py's cluster client keeps its own retry layer (``RedisCluster.retry``; it re-sends a
command after ``ConnectionError``/``TimeoutError``/``ClusterDownError`` whether or not it may have
run, and the sync pipeline re-sends commands whose reply was lost one by one). poolguard sets that
retry to 0 and wraps ``execute_command`` / ``pipeline().execute()`` in its Guard instead, so the
retry-safety rule decides. MOVED and ASK stay redis-py's: they are answered *before* executing
and redis-py follows them (and refreshes its slot table) inside one attempt.

"Was the command sent?" is known per attempt: the attempt opens a :class:`SentMark` (a
ContextVar), and the guarded node connections set it when a command's bytes have all been
written. Bytes written while connecting (HELLO, AUTH, READONLY) or while redis-py refreshes the
topology (CLUSTER SLOTS) do not count: those run with the mark suspended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolguard.backends import redis as backend
from poolguard.core.deadline import current_deadline, remaining
from poolguard.core.disposition import Classification, Disposition, Scope
from poolguard.core.retry import Attempts
from poolguard.integrations.redis import _common as c

__all__ = ["SentMark", "classify", "mark_send_started", "mark_sent", "sent_suspended"]


class SentMark:
    """One attempt's send flags (shared with child tasks): ``started``, a send of its bytes
    began (some may have left); ``sent``, a send finished."""

    __slots__ = ("sent", "started")

    def __init__(self) -> None:
        self.sent = False
        self.started = False


_mark: ContextVar[SentMark | None] = ContextVar("poolguard_cluster_sent", default=None)


@contextmanager
def attempt_mark() -> Iterator[SentMark]:
    """Open the mark of one attempt (a command or a pipeline)."""
    mark = SentMark()
    token = _mark.set(mark)
    try:
        yield mark
    finally:
        _mark.reset(token)


@contextmanager
def sent_suspended() -> Iterator[None]:
    """Writes in this block (handshake, topology refresh) are not the command's."""
    token = _mark.set(None)
    try:
        yield
    finally:
        _mark.reset(token)


def mark_send_started() -> None:
    mark = _mark.get()
    if mark is not None:
        mark.started = True


def mark_sent() -> None:
    mark = _mark.get()
    if mark is not None:
        mark.sent = True


#: :func:`read_timeout`'s "leave the connection's own socket timeout".
KEEP: Any = object()


def read_timeout(configured: float | None, args: Any) -> Any:
    """The read timeout of the command about to be sent: a blocking command's allowance, capped
    by the caller's deadline; :data:`KEEP` when neither applies (the common case). Computed
    *before* the send, so a spent deadline raises while nothing is on the wire."""
    info = backend.lookup(args[0]) or backend.command_info(args)
    if info.block is None and current_deadline() is None:
        return KEEP
    return c.command_timeout(configured, info, args)


def batch_read_timeout(configured: float | None) -> Any:
    """The read timeout of a pipeline's replies: the deadline's cap, or :data:`KEEP`."""
    return KEEP if current_deadline() is None else c.deadline_cap(configured)


#: Replies a node sends *before* executing, while the cluster reconfigures: any command may be
#: retried, until the retry window ends (like a connect failure), and without charging the retry
#: budget (every caller meets them during a failover; they are not load on a sick server).
RECONFIGURING = frozenset({"cluster_down", "try_again", "master_down", "readonly_replica"})

_RECONFIGURING_CLASSES: dict[type[BaseException], str] = {
    rex.ClusterDownError: "cluster_down",
    rex.TryAgainError: "try_again",
    rex.MasterDownError: "master_down",
    rex.ReadOnlyError: "readonly_replica",
}

#: redis-py's RedisClusterException when no startup node answered the topology refresh.
UNREACHABLE = "Redis Cluster cannot be connected"


def deadline_spent() -> bool:
    """The caller's deadline has run out (a topology refresh can then only fail, and its
    "cannot be connected" would say nothing about the cluster)."""
    left = remaining()
    return left is not None and left <= 0


def refresh_cut_short(exc: BaseException) -> BaseException:
    """The error of a topology refresh the caller's deadline cut short: a timeout, not the
    cluster unreachable (which would be retried as a connect failure and count as an outage)."""
    return c.QueryTimeoutError(
        f"deadline exceeded during the Redis Cluster topology refresh ({exc})",
        hint="raise the poolguard.deadline() budget",
    )


def classify(exc: BaseException) -> Classification:
    """:func:`poolguard.backends.redis.classify`, adapted to a cluster.

    - A node that refuses connections is one node failing over, not the service down: retried
      like a connect failure (nothing was sent) but the breaker is left alone (``breaker=False``).
      The breaker opens when no node at all answers the topology refresh.
    - CLUSTERDOWN, TRYAGAIN, MASTERDOWN, READONLY and a slot missing from the client's table are
      rejections before execution: retried for any command within the retry window.
    """
    if isinstance(exc, rex.SlotNotCoveredError):
        return Classification(
            Disposition.RETRY, "slot_not_covered", connect_phase=True, breaker=False
        )
    if isinstance(exc, rex.RedisClusterException):
        if str(exc).startswith(UNREACHABLE):
            return Classification(
                Disposition.RETRY,
                "cluster_unreachable",
                disconnect=True,
                scope=Scope.CONNECTION,
                connect_phase=True,
            )
        return Classification(Disposition.FAIL, "cluster_error")
    c = backend.classify(exc)
    if c.reason not in RECONFIGURING:
        reason = _RECONFIGURING_CLASSES.get(type(exc))
        if reason is not None:
            # redis-py raises some of these itself, without the reply's error code.
            c = Classification(Disposition.RETRY, reason)
    if c.reason in RECONFIGURING:
        return dataclasses.replace(c, connect_phase=True, breaker=False)
    if c.connect_phase:
        return dataclasses.replace(c, breaker=False)
    return c


def may_have_run(result: Any) -> bool:
    """A pipeline command's result says it may have been executed (an answer, or a reply lost
    after the bytes left). Rejections before execution and connect failures say it did not."""
    if not isinstance(result, BaseException):
        return True
    if isinstance(result, rex.MovedError | rex.AskError | rex.TryAgainError):
        return False
    c = classify(result)
    return not (c.disposition is Disposition.RETRY or c.connect_phase)


class ClusterPipelinePartiallyApplied(rex.ResponseError):
    """A cross-slot pipeline failed after some of its commands ran; not replayed because not
    every command is idempotent."""


def partially_applied(index: int, error: BaseException) -> ClusterPipelinePartiallyApplied:
    return ClusterPipelinePartiallyApplied(
        f"poolguard: command #{index + 1} of a cluster pipeline failed "
        f"({type(error).__name__}: {error}) after other commands of it may have run; not "
        "replayed because not all of its commands are idempotent"
    )


# -- the adapters' shared bodies ---------------------------------------------------------------
# redis-py's sync and asyncio cluster clients differ inside (per-node pools vs connection lists,
# NodesManager vs client refresh, two pipeline designs), so the adapters are two hand-written
# modules; what they decide is here, as context managers both sides wrap their own call in.


def no_retry() -> Retry:
    """redis-py's cluster retry, off: one attempt per call, poolguard's Guard retries."""
    return Retry(NoBackoff(), 0)


def guarded_class(guarded: type[Any], policy: c.Policy, base: type[Any] | None) -> type[Any]:
    """The node connection class of one client: ``guarded`` (mixed with ``base``, e.g. SSL)
    with the client's policy on the class (redis-py builds node connections from keyword
    arguments it filters, so the policy cannot ride on them)."""
    bases = (guarded,) if base is None else (guarded, base)
    return type(guarded.__name__, bases, {"guard_policy": policy})


class GuardedClientMixin:
    """The client part both adapters share (first in their bases, before redis-py's client)."""

    guard_policy: c.Policy

    def __init__(self, *args: Any, poolguard_policy: c.Policy, **kwargs: Any) -> None:
        # Set first: redis-py's __init__ already runs commands (COMMAND, CLUSTER SLOTS).
        self.guard_policy = poolguard_policy
        super().__init__(*args, **kwargs)

    def set_retry(self, retry: Any) -> None:
        c.check_set_retry(retry)
        super().set_retry(retry)  # type: ignore[misc]


@contextmanager
def connecting(conn: Any) -> Iterator[None]:
    """A node connection's connect: bounded by the connect timeout, failures tagged and counted,
    the handshake's writes not the command's send. A lazy connect runs inside the command's send:
    the handshake must not take the command's read timeout (``guard_next_read``), nor leave its
    own behind."""
    policy: c.Policy = conn.guard_policy
    started = time.monotonic()
    conn.socket_connect_timeout = c.connect_timeout(policy.connect_timeout)
    next_read = conn.guard_next_read
    try:
        with sent_suspended():  # HELLO/AUTH/READONLY are not the command
            yield
    except Exception as exc:
        policy.connect_failed(exc)
        raise
    finally:
        conn.socket_connect_timeout = policy.connect_timeout
        conn.guard_next_read = next_read
    policy.connected(started, time.monotonic())


@contextmanager
def command_attempt(
    attempts: Attempts, info: backend.CommandInfo, forced: bool | None, args: Any
) -> Iterator[None]:
    """One attempt of a command: its failure says whether it may be retried (sent or not,
    idempotent or not) and names the command."""
    with attempt_mark() as mark:
        try:
            yield
        except BaseException as exc:
            idem = c.rule_idempotent(info, args) if forced is None else forced
            attempts.op = (c.SENT if mark.sent else c.NOT_SENT)[idem]
            c.note_command(exc, args[0])
            raise


def pipeline_plan(idempotent: bool | None, stack: list[Any]) -> tuple[bool | None, bool]:
    """The caller's say on idempotence (``pipeline(idempotent=)``, else ``poolguard``'s override)
    and whether the whole pipeline may be replayed after it was sent."""
    forced = c.override() if idempotent is None else idempotent
    return forced, c.pipeline_idempotent(forced, stack)


@contextmanager
def pipeline_attempt(
    attempts: Attempts, idem: bool, transactional: bool, commands: list[Any]
) -> Iterator[None]:
    """One attempt of a whole pipeline (all-or-nothing across slots). A plain pipeline that
    failed after some of its commands may have run, and that may not be replayed, raises
    :class:`ClusterPipelinePartiallyApplied` (``commands``: this attempt's, with their results)."""
    with attempt_mark() as mark:
        try:
            yield
        except BaseException as exc:
            # A plain pipeline runs command by command as its bytes arrive: a send cut short
            # (a long one goes out in chunks) may have run a prefix. An incomplete MULTI/EXEC
            # never ran (no EXEC arrived); one command alone never runs half-received.
            sent = mark.sent or (mark.started and not transactional)
            attempts.op = (c.SENT if sent else c.NOT_SENT)[idem]
            c.note_command(exc, "MULTI/EXEC" if transactional else "the pipeline")
            if sent and not idem and not transactional:
                ran = [i for i, cmd in enumerate(commands) if may_have_run(cmd.result)]
                if ran:
                    raise partially_applied(ran[0], exc) from exc
            raise


def node_gauges(role: str | None, connected: int, created: int, idle: int) -> dict[str, Any]:
    """One node's connections: ``created`` not yet discarded, ``idle`` of them free."""
    return {"role": role, "size": connected, "checked_out": created - idle, "idle": idle}


def cluster_gauges(nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The client's gauges: the nodes' (:func:`node_gauges`, by node name) and their sums."""
    totals = {key: sum(n[key] for n in nodes.values()) for key in ("size", "checked_out", "idle")}
    return {**totals, "nodes": nodes}
