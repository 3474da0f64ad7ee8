"""Which environment variables a ``Settings`` is read from, and the unknown-variable policy.

Precedence, most specific first (the first one set wins):

1. keyword arguments to ``Settings.from_env(...)``;
2. ``POOLGUARD_<NAME>_<FIELD>`` for a named database (``name="analytics"``);
3. ``POOLGUARD_REDIS_<FIELD>`` for a Redis client;
4. ``POOLGUARD_<FIELD>``;
5. ``REDIS_DEFAULTS`` for a Redis client, then the ``Settings`` defaults.

URLs: ``DATABASE_URL`` / ``REDIS_URL``, or ``<NAME>_DATABASE_URL`` / ``<NAME>_REDIS_URL``.

An unknown ``POOLGUARD_*`` variable is almost always a typo that would otherwise silently leave a
default in place (``POOLGUARD_QUERY_TIMEOUTS=5s`` meaning *no* query timeout), so it fails with a
suggestion; ``POOLGUARD_ALLOW_UNKNOWN=1`` turns that into a logged warning, for environments
shared with a newer poolguard that knows more variables.

Main names: :func:`lookup_order`, :func:`url_variable`, :func:`check_unknown`. ``settings.py``
reads through them; what a value may be is ``fields.py``.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping

from poolguard.config.fields import ENV_FIELDS
from poolguard.config.parse import parse_bool
from poolguard.errors import ConfigError

__all__ = [
    "ALLOW_UNKNOWN",
    "EXTRA_VARIABLES",
    "PREFIX",
    "REQUEST_DEADLINE",
    "check_name",
    "check_unknown",
    "lookup_order",
    "url_variable",
]

PREFIX = "POOLGUARD_"
ALLOW_UNKNOWN = "POOLGUARD_ALLOW_UNKNOWN"
#: The default budget of one web request, read by ``poolguard.web``'s middlewares.
REQUEST_DEADLINE = "POOLGUARD_REQUEST_DEADLINE"
#: ``POOLGUARD_*`` variables that are not ``Settings`` fields but are read by poolguard. A new
#: one must be listed here, or ``from_env`` reports it as unknown.
EXTRA_VARIABLES: frozenset[str] = frozenset({ALLOW_UNKNOWN, REQUEST_DEADLINE})
#: Namespaces of ``POOLGUARD_*`` variables owned by other parts of poolguard, never settings:
#: ``POOLGUARD_TEST_*`` configures poolguard.testing's servers (POOLGUARD_TEST_SERVERS ...).
FOREIGN_PREFIXES = ("POOLGUARD_TEST_",)
REDIS_INFIX = "REDIS_"

logger = logging.getLogger("poolguard.config")

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*", re.ASCII)
_FIELD_VARS = {field.upper(): field for field in ENV_FIELDS}


def _reserved_names() -> frozenset[str]:
    # A name N is reserved when POOLGUARD_N_ starts a global variable (POOLGUARD_RETRY_ATTEMPTS
    # makes "retry" ambiguous), so every variable maps to exactly one meaning.
    reserved = {"REDIS", "ALLOW", "ALLOW_UNKNOWN", "TEST"}
    for var in [*_FIELD_VARS, *(v.removeprefix(PREFIX) for v in EXTRA_VARIABLES)]:
        words = var.split("_")
        reserved.update("_".join(words[:i]) for i in range(1, len(words)))
    return frozenset(reserved)


RESERVED_NAMES = _reserved_names()


def check_name(name: str) -> str:
    """The upper-cased database name, or ConfigError when it cannot be used as a prefix."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"database name {name!r} is not valid: use letters, digits and single underscores, "
            "starting with a letter (e.g. analytics, read_replica)",
            variable="name",
        )
    upper = name.upper()
    if upper in RESERVED_NAMES:
        raise ConfigError(
            f"database name {name!r} is reserved: POOLGUARD_{upper}_... would clash with "
            "poolguard's own variables; choose another name",
            variable="name",
        )
    return upper


def url_variable(backend: str, name: str | None) -> str:
    """``DATABASE_URL``, ``REDIS_URL``, ``ANALYTICS_DATABASE_URL``, ``CACHE_REDIS_URL``."""
    base = "REDIS_URL" if backend == "redis" else "DATABASE_URL"
    return f"{check_name(name)}_{base}" if name else base


def lookup_order(field: str, backend: str, name: str | None) -> list[str]:
    """The variables that may set ``field``, most specific first."""
    upper = field.upper()
    order = [f"{PREFIX}{check_name(name)}_{upper}"] if name else []
    if backend == "redis":
        order.append(f"{PREFIX}{REDIS_INFIX}{upper}")
    order.append(f"{PREFIX}{upper}")
    return order


def _is_known(variable: str) -> bool:
    rest = variable.removeprefix(PREFIX)
    if variable in EXTRA_VARIABLES or rest in _FIELD_VARS or variable.startswith(FOREIGN_PREFIXES):
        return True
    if rest.startswith(REDIS_INFIX) and rest.removeprefix(REDIS_INFIX) in _FIELD_VARS:
        return True
    for field_var in _FIELD_VARS:
        prefix = rest.removesuffix("_" + field_var)
        if prefix != rest and _NAME.fullmatch(prefix) and prefix not in RESERVED_NAMES:
            return True  # POOLGUARD_<NAME>_<FIELD> of a named database
    return False


def _all_variables() -> list[str]:
    names = [PREFIX + v for v in _FIELD_VARS]
    return names + [PREFIX + REDIS_INFIX + v for v in _FIELD_VARS] + sorted(EXTRA_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``POOLGUARD_*`` variables in ``environ`` that poolguard does not know, sorted."""
    return sorted(v for v in environ if v.startswith(PREFIX) and not _is_known(v))


def suggest(variable: str, candidates: Iterable[str] | None = None) -> str | None:
    """The closest known variable name, if one is close enough to be a likely typo."""
    pool = list(candidates) if candidates is not None else _all_variables()
    close = difflib.get_close_matches(variable, pool, n=1, cutoff=0.75)
    return close[0] if close else None


def _unknown_message(unknown: list[str]) -> str:
    parts = []
    for variable in unknown:
        guess = suggest(variable)
        parts.append(f"{variable} (did you mean {guess}?)" if guess else variable)
    return (
        "unknown poolguard variable" + ("s" if len(unknown) > 1 else "") + ": " + ", ".join(parts)
    )


def check_unknown(environ: Mapping[str, str]) -> None:
    """Fail on unknown ``POOLGUARD_*`` variables, or only log them under ALLOW_UNKNOWN."""
    unknown = unknown_variables(environ)
    if not unknown:
        return
    message = _unknown_message(unknown)
    allow = environ.get(ALLOW_UNKNOWN)
    if allow is not None and parse_bool(ALLOW_UNKNOWN, allow):
        logger.warning("%s; ignored because %s is set", message, ALLOW_UNKNOWN)
        return
    raise ConfigError(
        f"{message}; fix the name, or set {ALLOW_UNKNOWN}=1 to only warn", variable=unknown[0]
    )
