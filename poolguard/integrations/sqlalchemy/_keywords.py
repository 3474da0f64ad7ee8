"""``sqlalchemy.create_engine`` keywords that poolguard takes over: each is honoured (mapped onto
the poolguard setting that replaces it) or refused with a :class:`ConfigError` naming it; none is
silently ignored. ``engine.py`` applies it through :func:`translate` and :func:`reset_mode`;
the table is docs/postgres.md "SQLAlchemy keywords".

=====================  ===========================================================
keyword                becomes
=====================  ===========================================================
pool_timeout=N         acquire_timeout=N (None: wait forever; 0 or less refused)
pool_recycle=N         max_lifetime=N (-1: no lifetime limit; 0 refused)
pool_pre_ping=True     validate_idle=0 (ping at every checkout)
pool_pre_ping=False    validate_idle=off (no idle ping; suspect connections still are)
pool_reset_on_return   poolguard's reset ("rollback"/True: ROLLBACK only when a
                       transaction is open; "commit": COMMIT likewise; None/False: none)
connect_args           merged over poolguard's driver arguments (yours win per key;
                       PostgreSQL ``options`` are appended to poolguard's); its
                       ``connect_timeout`` also sets poolguard's connect deadline
=====================  ===========================================================

A keyword given together with the poolguard setting it maps to must agree with it (both are
explicit: there is no good guess which one was meant). A keyword beats the environment
(``pool_timeout=3`` wins over ``POOLGUARD_ACQUIRE_TIMEOUT``), as every keyword does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.pool.base import ResetStyle

from poolguard.config.fields import coerce
from poolguard.errors import ConfigError

__all__ = ["ResetMode", "reset_mode", "translate"]

ResetMode = Literal["rollback", "commit", "none"]

_Convert = Callable[[str, Any], Any]


def _pool_timeout(keyword: str, value: Any) -> Any:
    if value is None:
        return None  # QueuePool(timeout=None): wait for a connection forever
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        # 0 means "fail at once" to SQLAlchemy but "no timeout" to POOLGUARD_ACQUIRE_TIMEOUT:
        # refuse rather than pick one.
        raise ConfigError(
            f"{keyword}={value!r} is not valid: expected a number of seconds > 0 (None waits"
            " forever); for a pool that fails at once when empty use a tiny value (0.001)",
            variable=keyword,
        )
    return float(value)


def _pool_recycle(keyword: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
        raise ConfigError(
            f"{keyword}={value!r} is not valid: expected a number of seconds > 0, or -1 for"
            " no recycling (it becomes poolguard's max_lifetime, jittered 0-10% shorter)",
            variable=keyword,
        )
    return None if value < 0 else float(value)


def _pool_pre_ping(keyword: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{keyword}={value!r} is not valid: expected True or False", variable=keyword
        )
    return 0.0 if value else None


#: SQLAlchemy keyword -> (poolguard setting it becomes, converter).
_TO_SETTING: dict[str, tuple[str, _Convert]] = {
    "pool_timeout": ("acquire_timeout", _pool_timeout),
    "pool_recycle": ("max_lifetime", _pool_recycle),
    "pool_pre_ping": ("validate_idle", _pool_pre_ping),
}


def translate(overrides: dict[str, Any]) -> dict[str, Any]:
    """Map the SQLAlchemy keywords in ``overrides`` (consumed) onto poolguard settings (added),
    refusing a keyword that contradicts the setting given alongside it."""
    for keyword, (setting, convert) in _TO_SETTING.items():
        if keyword in overrides:
            _put(overrides, setting, convert(keyword, overrides.pop(keyword)), keyword)
    connect_args = overrides.get("connect_args") or {}
    if "connect_timeout" in connect_args:
        # The driver gets it as written; poolguard's client deadline follows it (else the
        # shorter POOLGUARD_CONNECT_TIMEOUT would silently cap it).
        _put(
            overrides,
            "connect_timeout",
            connect_args["connect_timeout"],
            "connect_args['connect_timeout']",
        )
    return overrides


def _put(overrides: dict[str, Any], setting: str, value: Any, keyword: str) -> None:
    if setting in overrides and coerce(setting, overrides[setting]) != coerce(
        setting, value, keyword
    ):
        raise ConfigError(
            f"{keyword} and {setting} were both given and disagree ({keyword} maps to"
            f" {setting}): pass only one",
            variable=keyword,
        )
    overrides.setdefault(setting, value)


def reset_mode(value: Any) -> ResetMode:
    """poolguard's reset-on-return for SQLAlchemy's ``pool_reset_on_return`` value."""
    if value in ("rollback", True, ResetStyle.reset_rollback):
        return "rollback"
    if value in ("commit", ResetStyle.reset_commit):
        return "commit"
    if value in (None, False, ResetStyle.reset_none):
        return "none"
    raise ConfigError(
        f"pool_reset_on_return={value!r} is not valid: expected 'rollback', 'commit' or None",
        variable="pool_reset_on_return",
    )
