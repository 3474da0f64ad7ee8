"""What an error means, and what to do about it given the operation it interrupted.

Backends map their errors (SQLSTATE, errno, reply prefix) to a :class:`Classification`: the
error's :class:`Disposition` — what the error alone says about safety — plus whether the
connection is dead and at which scope to invalidate. :func:`decide` combines it with the
:class:`Operation` (was the request possibly sent? idempotent? where in a transaction?) into an
:class:`Action`. The split mirrors urllib3's connect-error / read-error distinction:

- *before send*: the server cannot have executed the request → retry anything;
- *after send*: the server may have executed it → retry only idempotent operations, and only
  when no earlier work of the same transaction was lost with the connection;
- a definitive rollback (serialization failure, deadlock) → re-run the whole unit of work;
- a lost COMMIT (or autocommit write) reply → ambiguous, never retried transparently.

The whole truth table is exercised by ``tests/unit/core/test_disposition.py``. The tables that
produce Classifications are ``poolguard/backends/``; ``retry.py`` acts on the Action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Disposition(enum.Enum):
    """What an error alone says about retry safety."""

    RETRY = "retry"
    """The request did not reach execution (connect failure, LOADING, too many connections)."""
    RETRY_IF_IDEMPOTENT = "retry_if_idempotent"
    """The request may have reached the server (connection lost or timed out after send)."""
    RETRY_TRANSACTION = "retry_transaction"
    """The server definitively rolled the transaction back (40001, 40P01, MySQL 1213)."""
    AMBIGUOUS = "ambiguous"
    """The server may have applied the work and the outcome is unknown."""
    FAIL = "fail"
    """Permanent for this request: auth, syntax, constraint, permission, timeouts."""


class Scope(enum.Enum):
    """Which connections an error condemns."""

    NONE = "none"
    CONNECTION = "connection"
    """Only the connection that raised it."""
    POOL = "pool"
    """Every connection older than the failure is suspect (server restart, failover)."""


class Position(enum.Enum):
    """Where the interrupted operation stands relative to its transaction."""

    AUTOCOMMIT = "autocommit"
    """Applied on its own when it succeeds (SQL autocommit, any single Redis command)."""
    FIRST = "first"
    """First statement of an explicit transaction: no earlier work can be lost with it."""
    LATER = "later"
    """Inside a transaction that already did work: a dead connection loses that work too."""
    COMMIT = "commit"
    """The COMMIT itself (or Redis EXEC)."""


class Action(enum.Enum):
    """What the retry loop does next."""

    RETRY = "retry"
    """Run the same operation again (on a fresh connection if the old one died)."""
    RETRY_TRANSACTION = "retry_transaction"
    """Re-run the whole unit of work (only under run_transaction)."""
    AMBIGUOUS = "ambiguous"
    """Give up with AmbiguousResultError: the work may have been applied."""
    FAIL = "fail"
    """Give up with the error itself."""


@dataclass(frozen=True, slots=True)
class Classification:
    """A backend's verdict on one error."""

    disposition: Disposition
    reason: str
    """Short, stable, metric-friendly label: ``connect_refused``, ``serialization_failure``."""
    disconnect: bool = False
    """The connection is unusable and must be discarded."""
    scope: Scope = Scope.NONE
    connect_phase: bool = False
    """Failed while connecting: counts towards the circuit breaker."""
    refused: bool = False
    """Refused unexecuted by a server that is up but in the wrong role (read-only after a
    switchover): retried without charging the retry budget, which guards against re-executed
    work (a refusal costs the server a parse), and not counted by the breaker (the server still
    serves reads). Backoff, attempts and the deadline still bound it."""
    breaker: bool = True
    """False: a connect-phase failure that says nothing about the service as a whole (one Redis
    Cluster node failing over while the others serve): retried like one, breaker untouched."""


@dataclass(frozen=True, slots=True)
class Operation:
    """The context of the interrupted operation: the explicit second input of :func:`decide`."""

    position: Position = Position.AUTOCOMMIT
    idempotent: bool = False
    """Safe to apply twice (a read, an idempotent write, or vouched for by the caller)."""
    sent: bool = True
    """The request may have reached the server. False only when the adapter knows it did not."""
    unit_of_work: bool = False
    """Running under run_transaction: the whole unit can be re-run from the start."""


#: Dispositions that mean "nothing reached execution".
_BEFORE_SEND = frozenset({Disposition.RETRY})


def decide(error: Classification, op: Operation) -> Action:
    """The retry-safety rule of DESIGN.md as one pure function."""
    if error.disposition is Disposition.FAIL:
        return Action.FAIL
    redo_unit = Action.RETRY_TRANSACTION if op.unit_of_work else Action.FAIL
    not_executed = error.disposition in _BEFORE_SEND or not op.sent

    if op.position is Position.LATER:
        # Earlier work of the transaction is gone (disconnect) or the transaction is aborted:
        # only the whole unit can be re-run. The server rolled back; nothing is ambiguous.
        return redo_unit
    if op.position is Position.COMMIT:
        if not_executed or error.disposition is Disposition.RETRY_TRANSACTION:
            return redo_unit  # COMMIT never ran, or the server rolled back at commit time
        return Action.AMBIGUOUS  # the COMMIT's reply was lost: it may have been applied
    if error.disposition is Disposition.RETRY_TRANSACTION:
        if op.unit_of_work:
            return Action.RETRY_TRANSACTION
        # A single autocommit statement rolled back by the server can simply run again.
        return Action.RETRY if op.position is Position.AUTOCOMMIT else Action.FAIL
    if not_executed or op.idempotent:
        return Action.RETRY
    if op.position is Position.AUTOCOMMIT:
        return Action.AMBIGUOUS  # a write whose reply was lost
    # FIRST statement of an explicit transaction: without COMMIT the server rolls it back.
    return redo_unit
