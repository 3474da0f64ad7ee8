"""``poolguard.reconfigure(target, **settings)`` and ``poolguard.reload_on_sighup(*targets)``.

Live reconfiguration of an engine (``create_engine`` / ``create_async_engine``), a
``poolguard.postgres`` pool or a ``poolguard.redis`` client: the retry policy, the breaker and
budget, the timeouts, validation and eviction settings (``integrations/_live.py`` lists them).

All or nothing: the changes are validated as a whole (``Settings.replace``: the same rules and
messages as at creation) before anything is applied, so a bad value raises :class:`ConfigError`
naming it and the old settings stay in force. Applying is swapping whole immutable objects (the
Settings, the RetryPolicy) in each integration's state, under one lock, so an operation sees
either the old or the new values; what it captured when it began stays (see docs
"Live reconfiguration"). Each change is logged at INFO on ``poolguard.<backend>`` (old -> new
per field; no URL is ever part of it) and counted in ``stats()["reconfigured"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from poolguard.config.settings import Settings
from poolguard.core.stats import PoolStats
from poolguard.errors import ConfigError
from poolguard.logs import pool_fields

__all__ = ["reconfigure", "reload_on_sighup"]

logger = logging.getLogger("poolguard")

#: One reconfiguration at a time, process-wide (they are rare; a SIGHUP may race a call).
_lock = threading.Lock()


class Live(Protocol):
    """What each integration's state offers (``EngineState``, ``PoolRules``, redis ``Policy``)."""

    generation: int

    @property
    def settings(self) -> Settings: ...

    @property
    def name(self) -> str: ...

    def reconfigure(self, new: Settings, changed: frozenset[str]) -> None: ...


@dataclasses.dataclass(frozen=True)
class _Target:
    live: Live
    stats: PoolStats
    """The pool's stats: its logger, and the common fields of its log records."""
    refused: Mapping[str, str]
    """Settings this target cannot change (beyond OUT_OF_SCOPE), with the reason."""

    @property
    def log(self) -> logging.Logger:
        return self.stats.log


def reconfigure(target: Any, **settings: Any) -> dict[str, tuple[Any, Any]]:
    """Change settings of a live engine / native pool / Redis client; returns what changed
    (``{field: (old, new)}``, empty when nothing did).

    Values take the forms accepted at creation (``query_timeout="250ms"``, ``0.25``, ``None``
    or ``"off"``). Raises :class:`ConfigError` (nothing applied) for an unknown setting, one
    that cannot change on a live pool (``pool_size``, ``max_overflow``, ``url``...), or a bad
    value.
    """
    with _lock:
        return _apply(_target(target), settings)


def _apply(t: _Target, changes: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    old = t.live.settings
    new = _validated(old, changes, t.refused)
    changed = {
        f: (getattr(old, f), getattr(new, f)) for f in changes if getattr(old, f) != getattr(new, f)
    }
    if not changed:
        return {}
    # Counted first: the integrations' connect paths look at the generation before they rebuild
    # their parameters from the settings, which are swapped next.
    t.live.generation += 1
    t.live.reconfigure(new, frozenset(changed))
    _log(t, old, new, changed)
    return changed


def _validated(old: Settings, changes: Mapping[str, Any], refused: Mapping[str, str]) -> Settings:
    from poolguard.config.env import suggest
    from poolguard.integrations._live import OUT_OF_SCOPE, RECONFIGURABLE

    for key in changes:
        why = OUT_OF_SCOPE.get(key) or refused.get(key)
        if why is not None:
            raise ConfigError(
                f"{key} cannot be changed on a live pool: {why}", variable=key
            )  # fmt: skip
        if key not in RECONFIGURABLE:
            guess = suggest(key, RECONFIGURABLE)
            hint = f" (did you mean {guess}?)" if guess else ""
            raise ConfigError(f"unknown setting {key!r}{hint}", variable=key)
    try:
        return old.replace(**changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - coerce() raises ConfigError
        raise ConfigError(f"invalid settings {sorted(changes)}: {exc}") from exc


def _log(t: _Target, old: Settings, new: Settings, changed: Mapping[str, Any]) -> None:
    # describe(): durations as text ("250ms", "off"), the URL redacted (and never a field here).
    before, after = old.describe(), new.describe()
    parts = [f"{f}: {before[f]} -> {after[f]}" for f in sorted(changed)]
    t.log.info(
        "%s: reconfigured (%s)",
        t.live.name,
        ", ".join(parts),
        extra=pool_fields(
            t.stats,
            "reconfigure",
            generation=t.live.generation,
            changed={f: [before[f], after[f]] for f in sorted(changed)},
        ),
    )


def _target(obj: Any) -> _Target:
    from poolguard.integrations._live import NOT_FOR_REDIS

    pool = getattr(obj, "connection_pool", None)
    policy = getattr(pool, "guard_policy", None)
    if policy is not None:
        if not callable(getattr(pool, "guard_reconfigured", None)):
            raise ConfigError(f"reconfigure() does not support {type(pool).__name__} pools")
        from poolguard.integrations.redis._common import LiveClient

        refused = dict.fromkeys(NOT_FOR_REDIS, "it does not apply to a Redis client")
        return _Target(LiveClient(policy, pool), policy.guard.stats, refused)
    rules = getattr(obj, "_pg", None)
    if rules is not None and hasattr(rules, "guard"):
        from poolguard.integrations.psycopg_pool._rules import PoolRules

        if isinstance(rules, PoolRules):
            rules.pool_ref = weakref.ref(obj)
            return _Target(rules, rules.guard.stats, {})
    if hasattr(obj, "pool") or hasattr(obj, "sync_engine"):
        from poolguard.integrations.sqlalchemy.engine import guard_of

        state = guard_of(obj)
        return _Target(state, state.guard.stats, state.refused_live())
    raise ConfigError(
        "poolguard.reconfigure() takes an engine from poolguard.create_engine(), a client from "
        f"poolguard.redis or a pool from poolguard.postgres, not {type(obj).__name__}"
    )


# --- SIGHUP ------------------------------------------------------------------------------------

Handler = Callable[[int, Any], Any] | int | signal.Handlers | None


def reload_on_sighup(*targets: Any, environ: Mapping[str, str] | None = None) -> None:
    """On SIGHUP, re-read the environment (``Settings.from_env`` with each target's backend and
    name, as at creation) and apply the reconfigurable settings whose value *there* changed
    since the previous read (this call, then each SIGHUP): a setting given as a keyword at
    creation keeps its value until its variable changes.

    Opt-in, main thread only (``signal.signal``'s rule). A handler installed before is called
    after ours. A bad value is logged (naming the variable) and that target keeps its settings;
    the others are still reloaded. ``environ`` is for tests (default ``os.environ``, read at
    each signal).
    """
    if threading.current_thread() is not threading.main_thread():
        raise ConfigError("reload_on_sighup() must be called from the main thread")
    env = os.environ if environ is None else environ
    reloads = [_Reload(t, _from_env(t, env)) for t in map(_target, targets)]
    previous: Handler = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        reload_now(reloads, environ)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, handler)


@dataclasses.dataclass
class _Reload:
    target: _Target
    seen: Settings
    """The environment's settings at the previous read: only what differs from it is applied."""


def _from_env(t: _Target, environ: Mapping[str, str]) -> Settings:
    current = t.live.settings
    return Settings.from_env(environ, backend=current.backend, name=current.name)


def reload_now(reloads: list[_Reload], environ: Mapping[str, str] | None = None) -> None:
    """What the SIGHUP handler does; never raises (a signal handler must not)."""
    if not _lock.acquire(blocking=False):
        # The signal interrupted a reconfigure() in this very thread: run once it is done.
        threading.Thread(target=_reload_later, args=(reloads, environ), daemon=True).start()
        return
    try:
        _reload_all(reloads, environ)
    finally:
        _lock.release()


def _reload_later(reloads: list[_Reload], environ: Mapping[str, str] | None) -> None:
    with _lock:
        _reload_all(reloads, environ)


def _reload_all(reloads: list[_Reload], environ: Mapping[str, str] | None) -> None:
    env = os.environ if environ is None else environ
    for reload in reloads:
        _reload_one(reload, env)


def _reload_one(reload: _Reload, environ: Mapping[str, str]) -> None:
    from poolguard.integrations._live import RECONFIGURABLE

    t = reload.target
    try:
        fresh = _from_env(t, environ)
        wanted = {
            f: getattr(fresh, f)
            for f in RECONFIGURABLE
            if f not in t.refused and getattr(fresh, f) != getattr(reload.seen, f)
        }
        _apply(t, wanted)
        reload.seen = fresh
    except ConfigError as exc:
        t.log.error(
            "%s: SIGHUP reload refused, settings unchanged: %s",
            t.live.name,
            exc,
            extra=pool_fields(t.stats, "reconfigure_failed", variable=exc.variable),
        )
    except Exception as exc:  # a signal handler must not raise into arbitrary code
        t.log.exception(
            "%s: SIGHUP reload failed, settings unchanged",
            t.live.name,
            extra=pool_fields(t.stats, "reconfigure_failed", error_type=type(exc).__name__),
        )
