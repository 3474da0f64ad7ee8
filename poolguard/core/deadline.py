"""One absolute deadline per operation, carried in a ``contextvars.ContextVar``.

``with poolguard.deadline(2.5):`` bounds everything below it — acquire, connect, each attempt,
each backoff sleep. Because the deadline lives in a ContextVar it follows asyncio tasks (each
task copies the context when it is created) and does not leak between threads. Nested deadlines
only shrink: an inner ``deadline(10)`` inside an outer ``deadline(1)`` still ends at the outer one.

Main names: :func:`deadline` (public as ``poolguard.deadline``), :func:`remaining`,
:func:`effective_timeout` (a configured timeout clipped to the deadline). ``retry.py`` stops
retrying at it; the integrations clip acquire, connect and query timeouts with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType

from poolguard.errors import PoolguardError, QueryTimeout

Clock = Callable[[], float]

_deadline: ContextVar[float | None] = ContextVar("poolguard_deadline", default=None)


class deadline:  # lower-case: used like a function, ``with poolguard.deadline(2):``
    """Bound the enclosed block (sync or async, retries included) to ``seconds`` from now.

    ``seconds=None`` leaves any outer deadline in force and adds none. ``detach=True`` starts a
    new root instead: the outer deadline does not apply inside (a background job started from a
    request must not inherit the request's nearly spent budget; see ``poolguard.web``).
    """

    __slots__ = ("_clock", "_detach", "_seconds", "_token", "at")

    def __init__(
        self, seconds: float | None, *, detach: bool = False, clock: Clock = time.monotonic
    ) -> None:
        if seconds is not None and seconds < 0:
            raise ValueError(f"deadline must be >= 0 seconds, got {seconds!r}")
        self._seconds = seconds
        self._detach = detach
        self._clock = clock
        self._token: Token[float | None] | None = None
        self.at: float | None = None

    def __enter__(self) -> deadline:
        outer = None if self._detach else _deadline.get()
        at = outer
        if self._seconds is not None:
            mine = self._clock() + self._seconds
            at = mine if outer is None else min(outer, mine)
        self.at = at
        self._token = _deadline.set(at)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _deadline.reset(self._token)
            self._token = None

    async def __aenter__(self) -> deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def remaining(self) -> float | None:
        """Seconds left (may be negative), or None when unbounded."""
        return None if self.at is None else self.at - self._clock()


def current_deadline() -> float | None:
    """The absolute monotonic time the current operation must end by, or None."""
    return _deadline.get()


def remaining(clock: Clock = time.monotonic) -> float | None:
    """Seconds left before the current deadline (may be negative), or None when unbounded."""
    at = _deadline.get()
    return None if at is None else at - clock()


def effective_timeout(
    configured: float | None,
    *,
    what: str = "operation",
    error: type[PoolguardError] = QueryTimeout,
    clock: Clock = time.monotonic,
) -> float | None:
    """``min(configured, remaining)``; raises ``error`` if the deadline is already spent.

    ``None`` means no bound at all (no configured timeout and no deadline).
    """
    left = remaining(clock)
    if left is None:
        return configured
    if left <= 0:
        raise error(
            f"deadline exceeded before the {what} could start",
            hint="raise the poolguard.deadline() budget or make the work shorter",
        )
    return left if configured is None else min(configured, left)
