"""Deadlines for background jobs (Celery tasks, queue workers): a request's rules, for a job.

``job_deadline(seconds)`` is a decorator (sync and async functions) and a context manager (``with``
and ``async with``). Each run is a *root*: its budget starts when the run starts and is not cut
by a deadline of the code that scheduled it (a Starlette ``BackgroundTasks`` job runs inside the
request's call, whose budget is nearly spent by then). Inside it, nested deadlines only shrink,
and a spent budget fails the next database call with the library's timeout error.

With Celery, put it under the task decorator, so Celery registers the bounded function::

    @app.task(autoretry_for=(poolguard.PoolTimeout,), retry_backoff=True)
    @job_deadline(30)
    def settle(invoice_id: int) -> None: ...

It complements Celery's ``soft_time_limit`` / ``time_limit``: those interrupt the task from
outside; the deadline makes its database calls end by themselves, with a poolguard error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from poolguard.core.deadline import deadline
from poolguard.web._budget import _check_seconds

__all__ = ["job_deadline"]

P = ParamSpec("P")
R = TypeVar("R")

# The deadlines ``with job_deadline(...)`` blocks entered, innermost last. A ContextVar, not an
# attribute: one module-level job_deadline may be entered by many threads or tasks at once, and
# each must leave its own.
_entered: ContextVar[tuple[deadline, ...]] = ContextVar("poolguard_job_deadlines", default=())


class job_deadline:  # lower-case, like poolguard.deadline: used as a function
    """Run a job (each call of a decorated function, or a ``with`` block) in ``seconds``."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = _check_seconds(seconds)

    def _new(self) -> deadline:
        return deadline(self.seconds, detach=True)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # The body runs when the generator is iterated, after the call returned: a deadline
            # around the call would bound nothing.
            raise TypeError(
                f"job_deadline cannot decorate the generator function {fn.__qualname__}: "
                "decorate the function that iterates it, or use `with job_deadline(...)` there"
            )
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], self._wrap_async(fn))

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._new():
                return fn(*args, **kwargs)

        return run

    def _wrap_async(self, fn: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Any]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            async with self._new():
                return await fn(*args, **kwargs)

        return run

    def __enter__(self) -> deadline:
        bound = self._new()
        _entered.set((*_entered.get(), bound))
        return bound.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        *outer, bound = _entered.get()
        _entered.set(tuple(outer))
        bound.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> deadline:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
