"""WSGI middleware: every request runs under one ``poolguard.deadline`` (Flask, any WSGI app).

The deadline covers the application call *and* the iteration of the body it returns: a WSGI
server reads a streamed body (a generator, Flask's ``stream_with_context``) after the app
returned, so :class:`_Bounded` re-enters the same absolute deadline around every ``next()`` and
around ``close()`` (where Flask runs its teardown). The budget starts when the request arrives
and does not restart for the body. Threads the app starts itself do not inherit it unless run in
``contextvars.copy_context()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from poolguard.core.deadline import deadline
from poolguard.web._budget import FROM_ENV, RequestBudget, _FromEnv

__all__ = ["WSGIDeadlineMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGIDeadlineMiddleware:
    """``app.wsgi_app = WSGIDeadlineMiddleware(app.wsgi_app, headers=["x-request-timeout"])``.

    Same arguments and rules as :class:`poolguard.web.ASGIDeadlineMiddleware`.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        seconds: float | _FromEnv | None = FROM_ENV,
        headers: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.budget = RequestBudget.configure(seconds, headers, environ)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seconds = self.budget.for_request(lambda name: _values(environ, name))
        bound = deadline(seconds)
        with bound:
            body = self.app(environ, start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            return body  # a file sent as is (sendfile): no database call to bound, keep it fast
        return _Bounded(body, bound.at)


def _values(environ: Environ, name: str) -> list[str]:
    # The server folds a repeated header into one comma-separated value.
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return [value] if isinstance(value, str) else []


class _Bounded:
    """The app's body iterable, each step run under the request's absolute deadline ``at``."""

    __slots__ = ("_at", "_body", "_iterator")

    def __init__(self, body: Iterable[bytes], at: float | None) -> None:
        self._body = body
        self._at = at
        self._iterator: Iterator[bytes] | None = None

    def _bound(self) -> deadline:
        # Re-entering with what is left keeps the absolute end; a spent budget gives 0, under
        # which the next database call fails with the library's timeout error.
        left = None if self._at is None else max(0.0, self._at - time.monotonic())
        return deadline(left)

    def __iter__(self) -> _Bounded:
        return self

    def __next__(self) -> bytes:
        with self._bound():
            if self._iterator is None:
                self._iterator = iter(self._body)
            return next(self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            with self._bound():
                close()
