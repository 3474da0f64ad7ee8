"""The frozen ``Settings`` value object: keyword arguments over environment variables.

Durations are floats in seconds; ``None`` means "off" (no timeout / no limit). The field list
is the public vocabulary shared by every integration; each field maps to ``POOLGUARD_<NAME>``
(upper-cased field name) and, for the Redis client, ``POOLGUARD_REDIS_<NAME>`` first.

:func:`load_settings` (``Settings.from_env``) builds one; :data:`REDIS_DEFAULTS` are the defaults
that differ for the Redis client. Variable lookup is ``env.py``, value rules are ``fields.py``; the
core reads a Settings once, in ``poolguard/core/retry.py`` (``Guard.from_settings``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from poolguard.config import env as _env
from poolguard.config.fields import ENV_FIELDS, check_relations, coerce
from poolguard.config.parse import format_duration
from poolguard.config.urls import normalize_redis_url, normalize_sql_url, redact, sql_url_text
from poolguard.errors import ConfigError

JitterKind = Literal["full", "equal", "decorrelated", "none"]
PgBouncerMode = Literal["auto", "on", "off"]
AsyncDriver = Literal["psycopg", "asyncpg"]
Backend = Literal["sql", "redis"]


@dataclass(frozen=True)
class Settings:
    """Everything poolguard needs to build one guarded pool. See README "Configuration"."""

    url: str | None = None
    """DATABASE_URL (SQL) or REDIS_URL (Redis), normalized; secrets kept, never printed.

    A SQL URL is stored in its *sync* SQLAlchemy form (``postgres://`` becomes
    ``postgresql+psycopg://``, ``mysql://`` becomes ``mysql+pymysql://``), except that a
    written ``postgresql+psycopg_async://`` is kept (so an async engine's ``engine.url`` shows
    it); use :meth:`sql_url` for the form each mode uses. A SQLAlchemy ``URL`` object is
    accepted and stored as its text.
    """

    pool_size: int = 5
    max_overflow: int = 10
    acquire_timeout: float | None = 10.0
    connect_timeout: float | None = 5.0
    query_timeout: float | None = None
    transaction_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    lock_timeout: float | None = None
    max_lifetime: float | None = 1800.0
    max_idle: float | None = 600.0
    validate_idle: float | None = 1.0
    """Ping on checkout only when idle longer than this; 0 = always, None = never."""

    retry_attempts: int = 3
    """Total attempts including the first; 1 = no retries."""
    retry_backoff_initial: float = 0.05
    retry_backoff_max: float = 2.0
    retry_backoff_multiplier: float = 2.0
    retry_jitter: JitterKind = "full"
    retry_timeout: float | None = 10.0
    retry_budget: float | None = 0.2
    """Max ratio of retries to requests (token bucket); None = unlimited."""

    breaker_failures: int | None = 5
    """Consecutive connect-level failures that open the breaker; None = no breaker."""
    breaker_reset: float = 10.0

    tcp_keepalive: float | None = 30.0
    keepalive: float | None = None
    """Ping idle connections idle longer than this from a background thread; None = off."""
    pgbouncer: PgBouncerMode = "auto"
    async_driver: AsyncDriver = "psycopg"
    """PostgreSQL driver of async engines for a URL that names none (``postgres://``)."""

    name: str | None = None
    """Name of a secondary database (``Settings.from_env(name="analytics")``), for logs/stats."""
    backend: Backend = "sql"

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        shown = [f"url={redact(self.url)!r}" if self.url else "url=None"]
        shown += [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)[1:]]
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied (validated like construction)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        backend: Backend = "sql",
        name: str | None = None,
        **overrides: object,
    ) -> Settings:
        """Settings from keyword ``overrides``, then the environment, then the defaults.

        ``environ`` defaults to ``os.environ``. ``backend="redis"`` reads ``REDIS_URL``, starts
        from :data:`REDIS_DEFAULTS` and lets ``POOLGUARD_REDIS_<X>`` win over ``POOLGUARD_<X>``.
        ``name="analytics"`` reads ``ANALYTICS_DATABASE_URL`` (``ANALYTICS_REDIS_URL``) and lets
        ``POOLGUARD_ANALYTICS_<X>`` win over both. See docs/configuration.md.
        """
        return load_settings(environ, backend=backend, name=name, **overrides)

    def sql_url(self, *, async_: bool = False) -> str:
        """The SQLAlchemy URL for a sync (psycopg/PyMySQL) or async (psycopg or asyncpg /
        aiomysql) engine."""
        if self.url is None:
            raise ConfigError(
                f"no database URL configured: set {_url_var(self)}", variable=_url_var(self)
            )
        return normalize_sql_url(
            self.url, async_=async_, variable=_url_var(self), async_driver=self.async_driver
        )

    def redis_url(self) -> str:
        """The redis-py URL (``redis://``, ``rediss://`` or ``unix://``)."""
        if self.url is None:
            raise ConfigError(
                f"no Redis URL configured: set {_url_var(self)}", variable=_url_var(self)
            )
        return normalize_redis_url(self.url, variable=_url_var(self))

    def redacted_url(self) -> str | None:
        """The URL with its password hidden, for logs, stats and messages."""
        return None if self.url is None else redact(self.url)

    def describe(self) -> dict[str, object]:
        """Every field, durations as text (``250ms``, ``off``), URL redacted: for display."""
        shown: dict[str, object] = {"url": self.redacted_url()}
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            spec = ENV_FIELDS.get(field.name)
            if spec is not None and "duration" in spec.kind:
                value = format_duration(value)
            shown[field.name] = value
        return shown

    def warnings(self) -> list[str]:
        """Advice about settings that are valid but probably not what was meant."""
        notes = []
        if self.query_timeout is None:
            notes.append(
                "no query timeout configured: a slow or hung statement can hold a connection "
                "forever (set POOLGUARD_QUERY_TIMEOUT)"
            )
        lock, query = self.lock_timeout, self.query_timeout
        if self.backend == "sql" and lock and query and lock >= query:
            notes.append("lock_timeout >= query_timeout: the lock timeout can never fire")
        if self.max_idle and self.max_lifetime and self.max_idle >= self.max_lifetime:
            notes.append("max_idle >= max_lifetime: idle eviction can never happen first")
        if self.keepalive and self.max_idle and self.keepalive >= self.max_idle:
            notes.append(
                "keepalive >= max_idle: idle connections are retired before a keepalive ping"
                " reaches them (raise max_idle or lower keepalive)"
            )
        if self.retry_attempts > 1 and self.retry_timeout is None:
            notes.append("retries have no total time cap (POOLGUARD_RETRY_TIMEOUT is off)")
        return notes


#: Defaults that differ for the Redis client (Redis is expected to answer in milliseconds).
REDIS_DEFAULTS: dict[str, object] = {
    # redis-py's from_url allows 100 connections; a pubsub() holds one for its whole life,
    # and the pool opens connections only when they are needed, so the bound costs nothing.
    "pool_size": 100,
    "max_overflow": 0,
    "acquire_timeout": 2.0,
    "connect_timeout": 2.0,
    "query_timeout": 5.0,
    "validate_idle": 1.0,
    # How long a call keeps retrying once the server is known (a server that never answered
    # fails at once): rides out a restart of a second or two, reports an outage in <= 3 s.
    "retry_timeout": 3.0,
    "backend": "redis",
}


def _url_var(settings: Settings) -> str:
    return _env.url_variable(settings.backend, settings.name)


def _validate(settings: Settings) -> None:
    """Type-check, range-check and coerce every field in place (the dataclass is frozen)."""
    if settings.backend not in ("sql", "redis"):
        raise ConfigError(
            f"backend={settings.backend!r} is not valid: expected sql or redis", variable="backend"
        )
    if settings.name is not None:
        _env.check_name(settings.name)
    values: dict[str, object] = {}
    for field in ENV_FIELDS:
        values[field] = coerce(field, getattr(settings, field))
        object.__setattr__(settings, field, values[field])
    check_relations(values, lambda field: field)
    if settings.url is not None:
        object.__setattr__(settings, "url", _normalized_url(settings))


def _normalized_url(settings: Settings) -> str:
    url = sql_url_text(settings.url) if settings.backend == "sql" else settings.url
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"url={url!r} is not valid: expected a URL string", variable="url")
    if settings.backend == "redis":
        return normalize_redis_url(url, variable=_url_var(settings))
    return normalize_sql_url(
        url.strip(), async_=False, variable=_url_var(settings), keep_async_driver=True
    )


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    backend: Backend = "sql",
    name: str | None = None,
    **overrides: object,
) -> Settings:
    """Module-level spelling of :meth:`Settings.from_env`."""
    env = os.environ if environ is None else environ
    _check_keywords(overrides)
    _env.check_unknown(env)
    values: dict[str, object] = dict(REDIS_DEFAULTS) if backend == "redis" else {}
    values.update(backend=backend, name=name)
    labels: dict[str, str] = {}
    for field in ENV_FIELDS:
        label, text = _source(field, env, backend, name, overrides)
        if label is not None:
            labels[field] = label
            values[field] = coerce(field, text, label)
    # Checked here, not only in __post_init__, so the message names the variables involved.
    check_relations(_with_defaults(values), lambda field: labels.get(field, field))
    values["url"] = _load_url(env, backend, name, overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _check_keywords(overrides: Mapping[str, object]) -> None:
    unknown = sorted(set(overrides) - set(ENV_FIELDS) - {"url"})
    if unknown:
        guess = _env.suggest(unknown[0], [*ENV_FIELDS, "url"])
        hint = f" (did you mean {guess}?)" if guess else ""
        raise ConfigError(f"unknown setting {unknown[0]!r}{hint}", variable=unknown[0])


def _source(
    field: str,
    env: Mapping[str, str],
    backend: Backend,
    name: str | None,
    overrides: Mapping[str, object],
) -> tuple[str | None, object]:
    """(label, raw value) of the most specific source that sets ``field``; (None, None) if none."""
    if field in overrides:
        return field, overrides[field]
    for variable in _env.lookup_order(field, backend, name):
        if variable in env:
            return variable, env[variable]
    return None, None


def _with_defaults(values: Mapping[str, object]) -> dict[str, object]:
    merged = {f.name: f.default for f in dataclasses.fields(Settings)}
    merged.update(values)
    return merged


def _load_url(
    env: Mapping[str, str], backend: Backend, name: str | None, overrides: Mapping[str, object]
) -> str | None:
    if "url" in overrides:
        url = sql_url_text(overrides["url"]) if backend == "sql" else overrides["url"]
        if url is not None and not isinstance(url, str):
            raise ConfigError(f"url={url!r} is not valid: expected a URL string", variable="url")
        return url
    variable = _env.url_variable(backend, name)
    url = env.get(variable, "").strip()
    if not url:
        return None
    if backend == "redis":
        return normalize_redis_url(url, variable=variable)
    return normalize_sql_url(url, async_=False, variable=variable, keep_async_driver=True)
