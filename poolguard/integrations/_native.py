"""What ``poolguard.postgres`` and ``poolguard.mysql`` share when they build a native pool.

Both take the same call shape (``create_pool(url, hooks=..., **overrides)``, overrides mixing
poolguard settings and driver/pool arguments), refuse the driver arguments poolguard sets
itself, and give the pool one :class:`~poolguard.core.retry.Guard`. Only the names they refuse,
the URL check and the pool class differ; those stay in the two modules.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolguard.config.settings import Settings
    from poolguard.core.retry import Classifier, ErrorFactory, Guard
    from poolguard.core.stats import Hooks


def split_overrides(
    url: str | None, overrides: dict[str, Any], *, refused: frozenset[str], set_from: str
) -> tuple[Settings, dict[str, Any]]:
    """Settings from the environment + the poolguard-setting overrides, and the other overrides
    (driver/pool arguments) left for the caller. A refused argument raises a ``ConfigError``
    naming it and ``set_from`` (what to use instead); a missing URL the one naming DATABASE_URL.
    """
    from poolguard.config.settings import Settings
    from poolguard.errors import ConfigError

    names = {f.name for f in dataclasses.fields(Settings)}
    mine = {k: v for k, v in overrides.items() if k in names}
    rest = {k: v for k, v in overrides.items() if k not in names}
    clash = sorted(set(rest) & refused)
    if clash:
        raise ConfigError(
            f"{clash[0]!r} is set by poolguard from {set_from}; use those instead",
            variable=clash[0],
        )
    name = mine.pop("name", None)
    mine.pop("backend", None)  # the module decides the backend, whatever the caller passed
    if url is not None:
        mine["url"] = url
    settings = Settings.from_env(backend="sql", name=name, **mine)
    settings.sql_url()  # raises the ConfigError naming DATABASE_URL when there is none
    return settings, rest


def native_guard(
    settings: Settings,
    *,
    backend: str,
    classify: Classifier,
    make_error: ErrorFactory,
    hooks: Hooks | None,
) -> Guard:
    """The pool's guard. Connect failures are counted where the pool connects (its rules), not
    by the guard, so a failed background connect still counts once."""
    from poolguard.config.address import address_of
    from poolguard.core.retry import Guard

    return Guard.from_settings(
        settings,
        name=settings.name or "default",
        backend=backend,
        classify=classify,
        make_error=make_error,
        hooks=hooks,
        target=address_of(settings.sql_url()),
        counts_connect_failures=False,
    )


def snapshot(pool: Any, *, marker: str, module: str) -> dict[str, Any]:
    """``pool.stats()`` for a pool the named module made (it carries ``marker``); a clear
    ``TypeError`` for anything else (a plain psycopg_pool/aiomysql pool has no such stats)."""
    if getattr(pool, marker, None) is None:
        raise TypeError(f"{module}.stats() needs a pool made by {module}")
    result: dict[str, Any] = pool.stats()
    return result
