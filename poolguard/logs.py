"""Structured logs: poolguard's events as JSON lines through the standard ``logging`` module.

::

    import poolguard.logs

    poolguard.logs.configure_json()                  # stderr, INFO and up, "poolguard" loggers

Every event record of ``core/stats.py`` (retry, transaction_rerun, give_up, ambiguous,
breaker, acquire_timeout at INFO/WARNING; disconnect INFO; evict DEBUG) carries the same
``extra`` fields, :data:`poolguard.core.stats.LOG_FIELDS`; :class:`JsonFormatter` writes them as
one JSON object per line, ``null`` where a field does not apply, so a log pipeline can parse them
without knowing the message. Records without those fields (poolguard's other messages, or any
logger the formatter is given) keep ``ts``/``level``/``logger``/``message``.

Poolguard's other records about one pool (a live reconfiguration, a Redis resubscription, a
keepalive sweep that failed, a configuration note at creation) carry the same fields through
:func:`pool_fields`, with an ``event`` of their own (``reconfigure``, ``reconfigure_failed``,
``resubscribe``, ``keepalive_error``, ``keepalive_refill_failed``, ``config_warning``).

``target`` is the redacted ``host:port`` the pool connects to; the message and any URL-looking
text in it go through :func:`poolguard.config.urls.redact` once more, so no password reaches
a line even if a message quoted a URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any

from poolguard.config.urls import redact
from poolguard.core.stats import LOG_FIELDS, PoolStats

__all__ = ["EXTRA_FIELDS", "JsonFormatter", "configure_json", "pool_fields"]

#: Fields some events add after LOG_FIELDS (give_up: why; breaker: old; evict: age, idle;
#: acquire_timeout: waited; any event with an exception: error_type; reconfigure: changed,
#: generation, variable; resubscribe: channels, patterns, gap).
EXTRA_FIELDS = (
    "why",
    "old",
    "age",
    "idle",
    "waited",
    "error_type",
    "changed",
    "generation",
    "variable",
    "channels",
    "patterns",
    "gap",
)


def pool_fields(stats: PoolStats, event: str, **more: Any) -> dict[str, Any]:
    """``extra`` for a pool's log record that is not one of core/stats.py's events (a
    reconfiguration, a resubscription, a keepalive or configuration note): the same
    LOG_FIELDS keys as those events (``event``, ``pool``, ``backend``, ``target``), then
    ``more`` (keys of EXTRA_FIELDS, or ``reason``)."""
    return {
        "event": event,
        "pool": stats.name,
        "backend": stats.backend,
        "target": stats.target,
        **more,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    then poolguard's event fields when the record has them, then ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub(record.getMessage()),
        }
        if hasattr(record, "event"):
            for key in LOG_FIELDS:
                out[key] = getattr(record, key, None)
        for key in EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = _scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _scrub(text: str) -> str:
    """``text`` with every URL in it redacted (and libpq ``password=`` values)."""
    return redact(_URL.sub(lambda m: redact(m[0]), text))


_MARK = "_poolguard_json"


def configure_json(
    stream: IO[str] | None = None,
    level: int | str = "INFO",
    *,
    logger: str = "poolguard",
    propagate: bool = False,
) -> logging.Handler:
    """Send ``logger`` (all of poolguard by default) to ``stream`` (stderr) as JSON lines at
    ``level`` and up. Calling it again replaces the handler it installed before. ``propagate``
    False keeps the same records from also reaching the root logger's (text) handlers."""
    target = logging.getLogger(logger)
    for handler in list(target.handlers):
        if getattr(handler, _MARK, False):
            target.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter())
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = propagate
    return handler
