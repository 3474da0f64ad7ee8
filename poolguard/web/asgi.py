"""ASGI middleware: every HTTP request runs under one ``poolguard.deadline``.

Pure ASGI, so it needs no framework import and wraps Starlette, FastAPI or any ASGI app.
What the deadline covers is the application call: the endpoint, dependencies, a
``StreamingResponse`` body (Starlette runs it inside the call) and ``BackgroundTasks`` (also run
inside it, after the response is sent: wrap one in :func:`poolguard.web.job_deadline` to give it a
budget of its own). ``def`` endpoints run in a worker thread that gets a copy of the context, so
they see the deadline too. WebSocket and lifespan scopes pass through unbounded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from poolguard.core.deadline import deadline
from poolguard.web._budget import FROM_ENV, RequestBudget, _FromEnv

__all__ = ["ASGIDeadlineMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIDeadlineMiddleware:
    """``app.add_middleware(ASGIDeadlineMiddleware, headers=["grpc-timeout"])``.

    ``seconds``: the default budget; when not passed, ``POOLGUARD_REQUEST_DEADLINE`` (required
    then). ``headers``: budget headers the client may shorten it with (``x-request-timeout``,
    ``grpc-timeout``); none unless listed. A bad value raises ConfigError here, at start-up.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        seconds: float | _FromEnv | None = FROM_ENV,
        headers: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.budget = RequestBudget.configure(seconds, headers, environ)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = self.budget.for_request(lambda name: _values(scope, name))
        async with deadline(seconds):
            await self.app(scope, receive, send)


def _values(scope: Scope, name: str) -> Iterator[str]:
    # ASGI header names are lower-case bytes; values are latin-1 by the HTTP spec.
    wanted = name.encode("latin-1")
    for key, value in scope.get("headers", ()):
        if key == wanted:
            yield value.decode("latin-1")
