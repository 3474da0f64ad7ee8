"""The frozen ``Settings`` value object: keyword arguments over environment variables.

Durations are floats in seconds; ``None`` means "off" (no timeout / no limit). The field list
is the public vocabulary shared by every integration; each field maps to ``POOLGUARD_<NAME>``
(upper-cased field name) and, for the Redis client, ``POOLGUARD_REDIS_<NAME>`` first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

JitterKind = Literal["full", "equal", "decorrelated", "none"]
PgBouncerMode = Literal["auto", "on", "off"]
Backend = Literal["sql", "redis"]


@dataclass(frozen=True)
class Settings:
    """Everything poolguard needs to build one guarded pool. See README "Configuration"."""

    url: str | None = None
    """DATABASE_URL (SQL) or REDIS_URL (Redis), normalized; secrets kept, never printed."""

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
    pgbouncer: PgBouncerMode = "auto"

    name: str | None = None
    """Name of a secondary database (``Settings.from_env(name="analytics")``), for logs/stats."""
    backend: Backend = "sql"

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied (validated like construction)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


#: Defaults that differ for the Redis client (Redis is expected to answer in milliseconds).
REDIS_DEFAULTS: dict[str, object] = {
    "pool_size": 10,
    "max_overflow": 0,
    "acquire_timeout": 2.0,
    "connect_timeout": 2.0,
    "query_timeout": 5.0,
    "validate_idle": 1.0,
    "backend": "redis",
}
