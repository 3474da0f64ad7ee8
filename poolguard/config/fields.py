"""What each ``Settings`` field accepts: one table, used by construction and by ``from_env``.

A value may arrive as text (environment variable, or a keyword such as ``query_timeout="250ms"``)
or already typed (``query_timeout=0.25``); both go through :func:`coerce`, so the same rules
and the same messages apply whichever way a setting was given. ``label`` is what a message calls
the setting: the environment variable it came from, or the keyword name.

:data:`ENV_FIELDS` maps each field to its :class:`FieldSpec`; :func:`check_relations` rejects
contradictions between fields. Text is parsed by ``parse.py``; ``settings.py`` is the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from poolguard.config import parse
from poolguard.errors import ConfigError

__all__ = ["ENV_FIELDS", "FieldSpec", "check_relations", "coerce"]

Kind = Literal[
    "int", "optional_int", "duration", "optional_duration", "float", "optional_float", "choice"
]


@dataclass(frozen=True)
class FieldSpec:
    """How one field is parsed and bounded."""

    kind: Kind
    minimum: float = 0
    zero_disables: bool = True
    """For optional durations: ``0`` means off (statement_timeout=0 convention)."""
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    def expected(self) -> str:
        """The accepted form, for messages."""
        if self.kind == "int":
            return f"a whole number >= {self.minimum:g}"
        if self.kind == "optional_int":
            return f"a whole number >= {self.minimum:g}, or 0/off to disable"
        if self.kind == "duration":
            return parse.DURATION_FORM
        if self.kind == "optional_duration":
            off = "0/off" if self.zero_disables else "off"
            return f"{parse.DURATION_FORM}, or {off} to disable"
        if self.kind == "float":
            return f"a number >= {self.minimum:g}"
        if self.kind == "optional_float":
            return f"a number >= {self.minimum:g}, or off"
        return "one of " + "/".join(self.choices)


_DURATION = FieldSpec("optional_duration")
_BOOLISH = (
    ("1", "on"),
    ("true", "on"),
    ("yes", "on"),
    ("0", "off"),
    ("false", "off"),
    ("no", "off"),
)

#: Every field settable from ``POOLGUARD_<FIELD>`` (``url``, ``name`` and ``backend`` are not).
ENV_FIELDS: dict[str, FieldSpec] = {
    "pool_size": FieldSpec("int", minimum=1),
    "max_overflow": FieldSpec("int", minimum=0),
    "acquire_timeout": _DURATION,
    "connect_timeout": _DURATION,
    "query_timeout": _DURATION,
    "transaction_timeout": _DURATION,
    "idle_in_transaction_timeout": _DURATION,
    "lock_timeout": _DURATION,
    "max_lifetime": _DURATION,
    "max_idle": _DURATION,
    # 0 means "validate every checkout" here, so only the words switch validation off.
    "validate_idle": FieldSpec("optional_duration", zero_disables=False),
    "retry_attempts": FieldSpec("int", minimum=1),
    "retry_backoff_initial": FieldSpec("duration"),
    "retry_backoff_max": FieldSpec("duration"),
    "retry_backoff_multiplier": FieldSpec("float", minimum=1.0),
    "retry_jitter": FieldSpec("choice", choices=("full", "equal", "decorrelated", "none")),
    "retry_timeout": _DURATION,
    "retry_budget": FieldSpec("optional_float", minimum=0.0),
    "breaker_failures": FieldSpec("optional_int", minimum=1),
    "breaker_reset": FieldSpec("duration"),
    "tcp_keepalive": _DURATION,
    "keepalive": _DURATION,
    "pgbouncer": FieldSpec("choice", choices=("auto", "on", "off"), aliases=_BOOLISH),
    "async_driver": FieldSpec("choice", choices=("psycopg", "asyncpg")),
}


def _parse_text(spec: FieldSpec, label: str, text: str) -> object:
    if spec.kind == "int":
        return parse.parse_int(label, text, minimum=int(spec.minimum))
    if spec.kind == "optional_int":
        return parse.parse_optional_int(label, text, minimum=int(spec.minimum))
    if spec.kind == "duration":
        return parse.parse_duration(label, text)
    if spec.kind == "optional_duration":
        return parse.parse_optional_duration(label, text, zero_disables=spec.zero_disables)
    if spec.kind == "float":
        return parse.parse_float(label, text, minimum=spec.minimum)
    if spec.kind == "optional_float":
        return parse.parse_optional_float(label, text, minimum=spec.minimum)
    return parse.parse_choice(label, text, spec.choices, dict(spec.aliases) or None)


def _bad(label: str, value: object, spec: FieldSpec) -> ConfigError:
    return ConfigError(
        f"{label}={value!r} is not valid: expected {spec.expected()}", variable=label
    )


def _check_number(spec: FieldSpec, label: str, value: object) -> object:
    if value is None:
        if spec.kind in {"int", "duration", "float"}:
            raise _bad(label, value, spec)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(label, value, spec)
    if spec.kind in {"int", "optional_int"}:
        if not isinstance(value, int):
            raise _bad(label, value, spec)
        if value == 0 and spec.kind == "optional_int":
            return None
        if value < spec.minimum:
            raise _bad(label, value, spec)
        return value
    number = float(value)
    if not math.isfinite(number) or number < spec.minimum:
        raise _bad(label, value, spec)
    if spec.kind in {"duration", "optional_duration"} and number > parse.MAX_SECONDS:
        raise _bad(label, value, spec)
    if number == 0 and spec.kind == "optional_duration" and spec.zero_disables:
        return None
    return number


def coerce(field: str, value: object, label: str | None = None) -> object:
    """``value`` for ``field`` parsed (if text), type-checked and range-checked, or ConfigError."""
    spec = ENV_FIELDS[field]
    name = label or field
    if isinstance(value, str):
        return _parse_text(spec, name, value)
    if spec.kind == "choice":
        raise _bad(name, value, spec)
    return _check_number(spec, name, value)


def _show(label: str, seconds: float | None) -> str:
    return f"{label}={parse.format_duration(seconds)}"


def check_relations(values: Mapping[str, object], label: Callable[[str], str]) -> None:
    """Contradictions between fields (each field already valid on its own)."""
    query, txn = values.get("query_timeout"), values.get("transaction_timeout")
    if isinstance(query, float) and isinstance(txn, float) and query > txn:
        raise ConfigError(
            f"{_show(label('query_timeout'), query)} is longer than "
            f"{_show(label('transaction_timeout'), txn)}: a statement can never use its full "
            "timeout inside a transaction; lower the query timeout or raise the transaction "
            "timeout",
            variable=label("query_timeout"),
        )
    initial, most = values.get("retry_backoff_initial"), values.get("retry_backoff_max")
    if isinstance(initial, float) and isinstance(most, float) and initial > most:
        raise ConfigError(
            f"{_show(label('retry_backoff_initial'), initial)} is longer than "
            f"{_show(label('retry_backoff_max'), most)}: the first retry delay cannot exceed "
            "the largest one; lower the initial backoff or raise the maximum",
            variable=label("retry_backoff_initial"),
        )
