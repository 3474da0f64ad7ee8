"""Text → value parsers for environment variables, and the inverse formatters.

Rules, shared by every parser here:

* the only exception a parser raises is :class:`~poolguard.errors.ConfigError`, whatever the
  text (property-tested); its message names the variable, shows the value (redacted when it
  could be a secret) and says which form is accepted;
* matching is ASCII-only and case-insensitive, surrounding whitespace is ignored: ``float()``
  would happily accept ``"٣"``, ``"1_0"``, ``"inf"`` or ``"nan"``, none of which anybody means;
* ``format_*`` is the inverse of ``parse_*``: ``parse(format(x)) == x`` for every valid ``x``.

Which parser a setting uses is ``fields.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TypeVar

from poolguard.config.urls import redact
from poolguard.errors import ConfigError

__all__ = [
    "DISABLED_WORDS",
    "format_duration",
    "parse_bool",
    "parse_choice",
    "parse_duration",
    "parse_float",
    "parse_int",
    "parse_optional_duration",
    "parse_optional_float",
    "parse_optional_int",
    "show_value",
]

#: Words that switch an optional setting off (as does ``0`` for most of them).
DISABLED_WORDS = frozenset({"off", "none", "disabled", "never", "unlimited"})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

DURATION_FORM = "a duration such as 250ms, 5s, 2m, 1h or a bare number of seconds (1.5)"
# Longer values are surely a typo, and would overflow time arithmetic (monotonic() + 1e300).
MAX_SECONDS = 10 * 365 * 24 * 3600.0
MAX_SHOWN_CHARS = 80
# Variables whose value is shown as *** whatever it looks like.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|KEY", re.IGNORECASE)

_NUMBER = r"(?P<sign>[+-]?)(?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>ms|s|m|h)?", re.IGNORECASE | re.ASCII)
_INT = re.compile(r"(?P<sign>[+-]?)(?P<num>[0-9]+)", re.ASCII)
_FLOAT = re.compile(_NUMBER, re.IGNORECASE | re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

T = TypeVar("T", bound=str)


def show_value(variable: str, value: str) -> str:
    """``value`` as it may appear in a message: quoted, redacted if secret, truncated."""
    if _SECRET_NAME.search(variable):
        return "'***'"
    shown = redact(value)
    if len(shown) > MAX_SHOWN_CHARS:
        shown = shown[:MAX_SHOWN_CHARS] + "..."
    return repr(shown)


def _fail(variable: str, value: str, expected: str) -> ConfigError:
    return ConfigError(
        f"{variable}={show_value(variable, value)} is not valid: expected {expected}",
        variable=variable,
    )


def _is_disabled_word(text: str) -> bool:
    return text.strip().lower() in DISABLED_WORDS


def parse_duration(variable: str, text: str) -> float:
    """Seconds from ``250ms``, ``5s``, ``2m``, ``1h`` or ``1.5``; never negative, never off."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise _fail(variable, text, DURATION_FORM)
    if match["sign"] == "-":
        raise _fail(variable, text, DURATION_FORM + " (not negative)")
    unit = (match["unit"] or "s").lower()
    number = float(match["num"])
    # Divide for ms so that "250ms" gives exactly 0.25 (x * 0.001 can be off by one ulp).
    seconds = number / 1000.0 if unit == "ms" else number * _UNIT_SECONDS[unit]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise _fail(variable, text, DURATION_FORM + " (at most 10 years)")
    return seconds


def parse_optional_duration(
    variable: str, text: str, *, zero_disables: bool = True
) -> float | None:
    """Like :func:`parse_duration`, plus ``off``/``none``/``disabled`` (and ``0``) → ``None``."""
    if _is_disabled_word(text):
        return None
    try:
        seconds = parse_duration(variable, text)
    except ConfigError:
        raise _fail(variable, text, DURATION_FORM + ", or off to disable") from None
    if seconds == 0 and zero_disables:
        return None
    return seconds


def parse_int(variable: str, text: str, *, minimum: int | None = None) -> int:
    """A whole number (``5``, ``+5``), at least ``minimum`` when given."""
    form = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
    match = _INT.fullmatch(text.strip())
    if match is None or len(match["num"]) > 18:  # beyond 10**18 is a typo, not a pool size
        raise _fail(variable, text, form)
    value = int(match["num"]) * (-1 if match["sign"] == "-" else 1)
    if minimum is not None and value < minimum:
        raise _fail(variable, text, form)
    return value


def parse_optional_int(variable: str, text: str, *, minimum: int = 1) -> int | None:
    """A whole number >= ``minimum``, or ``0``/``off``/``none`` → ``None`` (disabled)."""
    if _is_disabled_word(text) or text.strip() in {"0", "+0", "-0"}:
        return None
    try:
        return parse_int(variable, text, minimum=minimum)
    except ConfigError:
        raise _fail(variable, text, f"a whole number >= {minimum}, or 0/off to disable") from None


def parse_float(variable: str, text: str, *, minimum: float | None = None) -> float:
    """A finite decimal number (``0.2``, ``2``, ``1e-3``), at least ``minimum`` when given."""
    form = "a number" + (f" >= {minimum:g}" if minimum is not None else "")
    match = _FLOAT.fullmatch(text.strip())
    if match is None:
        raise _fail(variable, text, form)
    value = float(match["num"]) * (-1.0 if match["sign"] == "-" else 1.0)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise _fail(variable, text, form)
    return value


def parse_optional_float(variable: str, text: str, *, minimum: float = 0.0) -> float | None:
    """A number >= ``minimum``, or ``off``/``none``/``unlimited`` → ``None`` (``0`` stays 0)."""
    if _is_disabled_word(text):
        return None
    try:
        return parse_float(variable, text, minimum=minimum)
    except ConfigError:
        raise _fail(variable, text, f"a number >= {minimum:g}, or off") from None


def parse_bool(variable: str, text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise _fail(variable, text, "one of 1/true/yes/on or 0/false/no/off")


def parse_choice(
    variable: str, text: str, choices: Sequence[T], aliases: dict[str, T] | None = None
) -> T:
    """One of ``choices`` (case-insensitive), or a key of ``aliases`` mapping to one."""
    word = text.strip().lower()
    for choice in choices:
        if word == choice:
            return choice
    if aliases and word in aliases:
        return aliases[word]
    raise _fail(variable, text, "one of " + "/".join(choices))


def format_duration(seconds: float | None) -> str:
    """The shortest readable text that :func:`parse_optional_duration` turns back into ``seconds``.

    ``None`` → ``off``; ``0.25`` → ``250ms``; ``300`` → ``5m``; ``7200`` → ``2h``.
    """
    if seconds is None:
        return "off"
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        count = seconds / size
        if seconds >= size and count.is_integer() and count * size == seconds:
            return f"{int(count)}{unit}"
    if seconds.is_integer():
        return f"{int(seconds)}s"
    millis = round(seconds * 1000.0)
    if seconds < 1 and millis / 1000.0 == seconds:
        return f"{millis}ms"
    return f"{seconds!r}s"
