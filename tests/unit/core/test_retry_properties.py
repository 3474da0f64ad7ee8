"""Properties of the retry loop over random failure sequences (hypothesis), both front ends.

For any sequence of classified failures, any operation, backoff, deadline and budget:
- the loop never sleeps past the deadline or the retry timeout;
- it never makes more than ``attempts`` calls;
- it only retries after a failure decide() allows to retry, and stops at the first it doesn't;
- an AMBIGUOUS verdict always surfaces as AmbiguousResultError chained to the failure;
- budget tokens never go negative and every retry spent one.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from core_fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from poolguard.core.backoff import JITTER_KINDS, Backoff
from poolguard.core.breaker import CircuitBreaker
from poolguard.core.budget import RetryBudget
from poolguard.core.deadline import deadline
from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    Position,
    decide,
)
from poolguard.core.retry import Attempts, Guard, RetryPolicy
from poolguard.errors import AmbiguousResultError, PoolguardError


class Boom(Exception):
    def __init__(self, c: Classification) -> None:
        super().__init__(c.reason)
        self.c = c


classifications = st.builds(
    Classification,
    st.sampled_from(list(Disposition)),
    st.sampled_from(["a", "b", "c"]),
    connect_phase=st.booleans(),
)
operations = st.builds(
    Operation, st.sampled_from(list(Position)), st.booleans(), st.booleans(), st.booleans()
)
scenario = st.fixed_dictionaries(
    {
        "failures": st.lists(classifications, min_size=0, max_size=8),
        "op": operations,
        "attempts": st.integers(1, 6),
        "backoff": st.builds(
            Backoff,
            st.floats(0.0, 1.0),
            st.floats(0.0, 3.0),
            st.floats(1.0, 4.0),
            st.sampled_from(JITTER_KINDS),
        ),
        "deadline": st.none() | st.floats(0.01, 10.0),
        "retry_timeout": st.none() | st.floats(0.01, 10.0),
        "attempt_time": st.floats(0.0, 0.5),
        "tokens": st.none() | st.floats(0.0, 5.0),
        "seed": st.integers(0, 1000),
    }
)


def run_scenario(s: dict[str, Any], mode: str) -> None:
    clock = FakeClock()
    guard = Guard(
        "p",
        "sql",
        lambda exc: exc.c if isinstance(exc, Boom) else Classification(Disposition.FAIL, "x"),
        policy=RetryPolicy(s["attempts"], s["backoff"], s["retry_timeout"]),
        budget=RetryBudget(None if s["tokens"] is None else 0.0, capacity=s["tokens"] or 0.0),
        breaker=CircuitBreaker(None, 1.0),
        clock=clock,
        rng=random.Random(s["seed"]),
    )
    failures: list[Classification] = s["failures"]
    calls: list[float] = []
    sleep_ends: list[float] = []

    def fn(attempts: Attempts) -> str:
        calls.append(clock.now)
        clock.advance(s["attempt_time"])
        if len(calls) <= len(failures):
            raise Boom(failures[len(calls) - 1])
        return "ok"

    def sleep(d: float) -> None:
        clock.sleep(d)
        sleep_ends.append(clock.now)

    async def asleep(d: float) -> None:
        sleep(d)

    async def afn(attempts: Attempts) -> str:
        return fn(attempts)

    start = clock.now
    outcome: BaseException | str
    with deadline(s["deadline"], clock=clock) as d:
        try:
            if mode == "sync":
                outcome = guard.run_with(fn, s["op"], sleep=sleep)
            else:
                outcome = asyncio.run(guard.arun_with(afn, s["op"], sleep=asleep))
        except Exception as exc:
            outcome = exc

    # Never more calls than attempts — except that connect-phase failures (nothing was sent)
    # are retried until a time window ends when there is one; never sleeps past the deadline
    # or retry timeout.
    window = s["retry_timeout"] is not None or d.at is not None
    # Every call beyond the attempt count followed a connect-phase failure.
    extra_after_connects = all(
        failures[i - 1].connect_phase for i in range(s["attempts"], len(calls))
    )
    assert (
        0 < len(calls) <= s["attempts"]
        or (window and extra_after_connects)
        or (d.at is not None and d.at <= start)
    )
    for end in sleep_ends:
        if d.at is not None:
            assert end < d.at
        if s["retry_timeout"] is not None:
            assert end < start + s["retry_timeout"]
    # Every retry followed a failure decide() allows to retry.
    for i in range(1, len(calls)):
        assert decide(failures[i - 1], s["op"]) in (Action.RETRY, Action.RETRY_TRANSACTION)
    if outcome == "ok":
        assert len(calls) == len(failures) + 1
        return
    if isinstance(outcome, PoolguardError) and not isinstance(outcome, AmbiguousResultError):
        assert d.at is not None  # only the deadline check raises poolguard's own timeout
        return
    assert isinstance(outcome, (Boom, AmbiguousResultError))
    last = failures[len(calls) - 1]
    if decide(last, s["op"]) is Action.AMBIGUOUS:
        assert isinstance(outcome, AmbiguousResultError)
        assert isinstance(outcome.__cause__, Boom)
        assert outcome.__cause__.c is last
    else:
        assert isinstance(outcome, Boom)
        assert outcome.c is last
    assert guard.budget.tokens >= 0.0
    if s["tokens"] is not None:
        # Each retry after a failure that reached the server costs a token; reconnecting
        # (connect-phase) is the breaker's business and is not charged.
        charged = sum(1 for f in failures[: len(calls) - 1] if not f.connect_phase)
        assert charged <= s["tokens"]


@settings(max_examples=100, deadline=None)
@given(scenario)
def test_sync_loop_properties(s: dict[str, Any]) -> None:
    run_scenario(s, "sync")


@settings(max_examples=40, deadline=None)
@given(scenario)
def test_async_loop_properties(s: dict[str, Any]) -> None:
    run_scenario(s, "async")
