"""poolguard's errors as HTTP answers: 504 when time ran out, 503 when the database is unavailable.

* 504 Gateway Timeout: :class:`~poolguard.QueryTimeout`, :class:`~poolguard.TransactionTimeout`,
  :class:`~poolguard.ConnectTimeout` (the database did not answer within the request's budget or
  a configured timeout), and a :class:`~poolguard.PoolTimeout` or
  :class:`~poolguard.CircuitOpenError` raised once the request's own budget is spent: the
  request ran out of time, whatever it was waiting for.
* 503 Service Unavailable: :class:`~poolguard.PoolTimeout` with budget left (no connection
  free within ``acquire_timeout``: the app is saturated), :class:`~poolguard.CircuitOpenError`
  with budget left (failing fast while the server is down), and any other poolguard error, e.g.
  :class:`~poolguard.AmbiguousResultError` (register your own handler for that one if clients
  must look the outcome up instead of retrying).
* None: not poolguard's (a driver error poolguard left as it was) or a ConfigError (a bug: 500
  by the framework's own rules).

"Spent" is read from the current ``poolguard.deadline``: the handlers run inside the middleware
(Starlette's ExceptionMiddleware and Flask's error handlers are inside the app it wraps), so the
request's deadline is still in force there.

The body is ``{"error": <class>, "detail": <first line of the message>}``: poolguard messages
never hold a password, and the hint (what to tune) stays in the server log.
"""

from __future__ import annotations

from typing import Any

from poolguard.core.deadline import remaining
from poolguard.errors import (
    CircuitOpenError,
    ConfigError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
)

__all__ = [
    "error_body",
    "flask_error_handler",
    "install_error_handlers",
    "starlette_error_handler",
    "status_for",
]

GATEWAY_TIMEOUT = 504
SERVICE_UNAVAILABLE = 503


def status_for(exc: BaseException, *, spent: bool | None = None) -> int | None:
    """The HTTP status for one of poolguard's errors, or None when it is not one to map.

    ``spent``: whether the request's budget is used up; by default, read from the current
    deadline (no deadline: not spent).
    """
    if not isinstance(exc, PoolguardError) or isinstance(exc, ConfigError):
        return None
    if isinstance(exc, QueryTimeout | TransactionTimeout | ConnectTimeout):
        return GATEWAY_TIMEOUT
    if isinstance(exc, PoolTimeout | CircuitOpenError):
        if spent is None:
            left = remaining()
            spent = left is not None and left <= 0
        return GATEWAY_TIMEOUT if spent else SERVICE_UNAVAILABLE
    return SERVICE_UNAVAILABLE


def error_name(exc: BaseException) -> str:
    """The poolguard class an error is (``QueryTimeout``), not its drop-in variant's name."""
    for cls in type(exc).__mro__:
        if cls.__module__ == "poolguard.errors" and "_" not in cls.__name__:
            return cls.__name__
    return type(exc).__name__


def error_body(exc: BaseException) -> dict[str, str]:
    """``{"error": "QueryTimeout", "detail": "..."}`` for a response."""
    message = getattr(exc, "message", None) or str(exc)
    return {"error": error_name(exc), "detail": message.splitlines()[0] if message else ""}


async def starlette_error_handler(request: Any, exc: Exception) -> Any:
    """Starlette/FastAPI exception handler: ``app.add_exception_handler(PoolguardError, ...)``."""
    from starlette.responses import JSONResponse  # only when a Starlette app calls it

    return JSONResponse(error_body(exc), status_code=status_for(exc) or 500)


def flask_error_handler(exc: Exception) -> tuple[dict[str, str], int]:
    """Flask error handler: ``app.register_error_handler(PoolguardError, ...)``."""
    return error_body(exc), status_for(exc) or 500


def install_error_handlers(app: Any) -> None:
    """Register the handler above that fits ``app`` (Starlette/FastAPI or Flask) for PoolguardError.

    A handler the app registers for a subclass (AmbiguousResultError, say) still wins: both
    frameworks pick the most specific class.
    """
    if hasattr(app, "add_exception_handler"):
        app.add_exception_handler(PoolguardError, starlette_error_handler)
    elif hasattr(app, "register_error_handler"):
        app.register_error_handler(PoolguardError, flask_error_handler)
    else:
        raise TypeError(f"{type(app).__name__} is neither a Starlette/FastAPI nor a Flask app")
