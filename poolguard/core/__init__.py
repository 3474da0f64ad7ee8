"""Policy core: pure, clock-injected decisions (no I/O).

Backends classify errors into :class:`Classification`; :func:`decide` applies the retry-safety
rule; :class:`Guard` (one per pool) runs the one retry loop with budget, breaker and stats.

One module per idea: ``disposition.py`` (what an error means, :func:`decide`), ``retry.py``
(:class:`Guard`, :class:`Attempts`), ``backoff.py``, ``breaker.py``, ``budget.py``,
``deadline.py``, ``stats.py``. Below the core is nothing; above it, ``backends/`` supplies the
classifications and ``integrations/`` calls :meth:`Guard.run_with` / ``arun_with``.
"""

from poolguard.core.backoff import Backoff, JitterKind
from poolguard.core.breaker import BreakerState, CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.deadline import current_deadline, deadline, effective_timeout, remaining
from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    Position,
    Scope,
    decide,
)
from poolguard.core.retry import (
    AUTOCOMMIT,
    Attempts,
    GiveUp,
    Guard,
    RetryPolicy,
    default_error,
    set_testing,
)
from poolguard.core.stats import Hooks, PoolStats

__all__ = [
    "AUTOCOMMIT",
    "Action",
    "Attempts",
    "Backoff",
    "BreakerState",
    "CircuitBreaker",
    "Classification",
    "Disposition",
    "GiveUp",
    "Guard",
    "Hooks",
    "JitterKind",
    "Operation",
    "PoolStats",
    "Position",
    "RetryBudget",
    "RetryPolicy",
    "Scope",
    "current_deadline",
    "deadline",
    "decide",
    "default_error",
    "effective_timeout",
    "remaining",
    "set_testing",
]
