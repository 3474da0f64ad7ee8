"""Deadlines that start at the request: web middlewares, HTTP error mapping, background jobs.

A request has a time budget; the database calls inside it must not outlive it. The middlewares
run each request under ``poolguard.deadline(budget)``, so every acquire, connect, attempt and
backoff below it ends by the budget, and a spent budget fails the next call with poolguard's
timeout error, which :func:`status_for` / the handlers turn into 504 or 503:

* :class:`ASGIDeadlineMiddleware` (Starlette, FastAPI) — ``asgi.py``;
* :class:`WSGIDeadlineMiddleware` (Flask, any WSGI app) — ``wsgi.py``;
* the budget: ``seconds=`` or ``POOLGUARD_REQUEST_DEADLINE``, shortened by opt-in
  ``X-Request-Timeout`` / ``grpc-timeout`` headers — ``_budget.py``;
* :func:`status_for`, :func:`install_error_handlers` and the two handlers — ``errors.py``;
* :class:`job_deadline` for Celery tasks and other jobs — ``jobs.py``.

Importing this package imports no web framework; the Starlette handler imports Starlette when
it runs.
"""

from poolguard.web._budget import (
    FROM_ENV,
    GRPC_TIMEOUT,
    HEADERS,
    X_REQUEST_TIMEOUT,
    RequestBudget,
    parse_grpc_timeout,
    parse_request_timeout,
)
from poolguard.web.asgi import ASGIDeadlineMiddleware
from poolguard.web.errors import (
    error_body,
    flask_error_handler,
    install_error_handlers,
    starlette_error_handler,
    status_for,
)
from poolguard.web.jobs import job_deadline
from poolguard.web.wsgi import WSGIDeadlineMiddleware

__all__ = [
    "FROM_ENV",
    "GRPC_TIMEOUT",
    "HEADERS",
    "X_REQUEST_TIMEOUT",
    "ASGIDeadlineMiddleware",
    "RequestBudget",
    "WSGIDeadlineMiddleware",
    "error_body",
    "flask_error_handler",
    "install_error_handlers",
    "job_deadline",
    "parse_grpc_timeout",
    "parse_request_timeout",
    "starlette_error_handler",
    "status_for",
]
