"""Configuration: Settings from keyword arguments over environment variables.

See docs/configuration.md for every variable, its default and accepted form.
"""

from poolguard.config.parse import format_duration, parse_duration, parse_optional_duration
from poolguard.config.settings import REDIS_DEFAULTS, Settings, load_settings
from poolguard.config.urls import dialect_of, normalize_redis_url, normalize_sql_url, redact

__all__ = [
    "REDIS_DEFAULTS",
    "Settings",
    "dialect_of",
    "format_duration",
    "load_settings",
    "normalize_redis_url",
    "normalize_sql_url",
    "parse_duration",
    "parse_optional_duration",
    "redact",
]
