"""How long one request may take: the configured default, capped header budgets.

Shared by the ASGI and the WSGI middleware, which differ only in how they read a header.

* The default is ``seconds=`` when the middleware is given one, else
  ``POOLGUARD_REQUEST_DEADLINE`` (duration syntax of ``config/parse.py``; ``off``/``0`` = no
  default; unset = ConfigError, as a forgotten budget is the hang this module exists to stop).
  The variable is validated whenever it is set, even under ``seconds=``: a bad deployment value
  fails at start-up, not never.
* Header budgets are opt-in (``headers=("x-request-timeout", "grpc-timeout")``): a client may
  *shorten* its request's budget, never lengthen it past the default. Without a default a header
  budget is used as sent: it can only bound a request that would otherwise have no bound.
* A malformed header value is ignored (the default applies): a client bug must not fail requests,
  and ignoring it can never give the client more time than the default.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from poolguard.config.env import REQUEST_DEADLINE
from poolguard.config.parse import MAX_SECONDS, parse_optional_duration
from poolguard.errors import ConfigError

__all__ = [
    "FROM_ENV",
    "GRPC_TIMEOUT",
    "HEADERS",
    "X_REQUEST_TIMEOUT",
    "RequestBudget",
    "parse_grpc_timeout",
    "parse_request_timeout",
]

logger = logging.getLogger("poolguard.web")

#: Decimal seconds, e.g. ``2.5`` (a common convention; no unit, no exponent, not negative).
X_REQUEST_TIMEOUT: Final = "x-request-timeout"
#: gRPC's ``TimeoutValue TimeoutUnit``: at most 8 digits and one of ``H M S m u n``.
GRPC_TIMEOUT: Final = "grpc-timeout"
HEADERS: Final = (X_REQUEST_TIMEOUT, GRPC_TIMEOUT)


class _FromEnv:
    def __repr__(self) -> str:
        return "FROM_ENV"


#: ``seconds=`` default of the middlewares: read ``POOLGUARD_REQUEST_DEADLINE``.
FROM_ENV: Final = _FromEnv()

# 12 integer digits are 30 000 years; 9 decimals are a nanosecond. Longer is not a budget.
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9}", re.ASCII)
_GRPC = re.compile(r"(?P<value>[0-9]{1,8})(?P<unit>[HMSmun])", re.ASCII)
# Divisors for the sub-second units so 100m is exactly 0.1 (as parse_duration does for ms).
_GRPC_SCALE: dict[str, tuple[float, float]] = {
    "H": (3600.0, 1.0),
    "M": (60.0, 1.0),
    "S": (1.0, 1.0),
    "m": (1.0, 1e3),
    "u": (1.0, 1e6),
    "n": (1.0, 1e9),
}


def parse_request_timeout(value: str) -> float | None:
    """Seconds from an ``X-Request-Timeout`` value (``2``, ``0.25``), or None if malformed."""
    text = value.strip(" \t")
    if not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a ``grpc-timeout`` value (``100m``, ``2S``, ``1H``), or None if malformed.

    Case matters: ``M`` is minutes, ``m`` milliseconds (gRPC over HTTP/2, "Requests").
    """
    match = _GRPC.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    multiplier, divisor = _GRPC_SCALE[match["unit"]]
    return int(match["value"]) * multiplier / divisor


_PARSERS: dict[str, Callable[[str], float | None]] = {
    X_REQUEST_TIMEOUT: parse_request_timeout,
    GRPC_TIMEOUT: parse_grpc_timeout,
}


def _check_seconds(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(
            f"seconds={seconds!r} is not valid: expected a number", variable="seconds"
        )
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise ConfigError(
            f"seconds={seconds!r} is not valid: expected 0 to {MAX_SECONDS:g} seconds",
            variable="seconds",
        )
    return float(seconds)


def _default(seconds: float | _FromEnv | None, environ: Mapping[str, str]) -> float | None:
    text = environ.get(REQUEST_DEADLINE)
    from_env = None if text is None else parse_optional_duration(REQUEST_DEADLINE, text)
    if not isinstance(seconds, _FromEnv):
        return None if seconds is None else _check_seconds(seconds)
    if text is None:
        raise ConfigError(
            f"{REQUEST_DEADLINE} is not set: set it to the budget of one request (e.g. 5s; "
            "off for none), or pass seconds= to the middleware",
            variable=REQUEST_DEADLINE,
        )
    return from_env


def _trusted(headers: Iterable[str]) -> tuple[str, ...]:
    if isinstance(headers, str):  # headers="grpc-timeout" would iterate over its letters
        headers = (headers,)
    names = tuple(dict.fromkeys(name.lower() for name in headers))
    for name in names:
        if name not in _PARSERS:
            raise ConfigError(
                f"headers: {name!r} is not a budget header poolguard reads; use "
                + " / ".join(HEADERS),
                variable="headers",
            )
    return names


@dataclass(frozen=True)
class RequestBudget:
    """The decision both middlewares share: a request's budget from its headers."""

    default: float | None
    headers: tuple[str, ...] = ()

    @classmethod
    def configure(
        cls,
        seconds: float | _FromEnv | None = FROM_ENV,
        headers: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> RequestBudget:
        """Validate everything now, so a bad value fails when the app starts (ConfigError)."""
        env = os.environ if environ is None else environ
        return cls(_default(seconds, env), _trusted(headers))

    def for_request(self, header: Callable[[str], Iterable[str]]) -> float | None:
        """Seconds for one request; ``header(name)`` gives the values of a lower-case header."""
        best = self.default
        for name in self.headers:
            for value in header(name):
                seconds = _header_seconds(name, value)
                if seconds is not None and (best is None or seconds < best):
                    best = seconds
        return best


def _header_seconds(name: str, value: str) -> float | None:
    # A list value ("1, 2", or a repeated header) counts element by element: the smallest
    # well-formed element wins, as nested deadlines only shrink.
    best: float | None = None
    for element in value.split(","):
        seconds = _PARSERS[name](element)
        if seconds is None:
            logger.debug("ignored malformed %s header value %r", name, element[:40])
            continue
        seconds = min(seconds, MAX_SECONDS)
        best = seconds if best is None else min(best, seconds)
    return best
