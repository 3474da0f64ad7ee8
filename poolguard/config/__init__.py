"""Configuration: Settings from keyword arguments over environment variables.

The frozen :class:`Settings` and :func:`load_settings` are in ``settings.py``; which variables it
reads, and in what order, is ``env.py``; what each field accepts is ``fields.py`` (text parsed by
``parse.py``); URLs and the one redaction helper are ``urls.py``. Every integration turns a Settings
into a ``core/retry.py`` :class:`Guard` (``Guard.from_settings``). See docs/configuration.md for
every variable, its default and accepted form.
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
