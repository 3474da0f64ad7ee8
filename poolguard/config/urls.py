"""Database and Redis URLs: the one redaction helper, normalization and dialect detection.

:func:`redact` is the only way a URL or DSN is shown anywhere in poolguard (messages, logs,
``repr``, CLI output). It never raises and errs on the side of hiding too much: when a URL is
ambiguous (an unencoded ``@`` or ``/`` in the password), it hides up to the *last* ``@`` of the
URL, so a password is never half-shown.

:func:`normalize_sql_url` turns the 12-factor forms (``postgres://``, ``mysql://``,
``mariadb://``) and driver-qualified SQLAlchemy URLs into the one driver poolguard supports for
each dialect and mode: psycopg 3 for PostgreSQL (sync and async), PyMySQL (sync) or aiomysql
(async) for MySQL/MariaDB. Everything after ``://`` is kept verbatim (query parameters such as
``sslmode`` or ``application_name`` included).
:func:`dialect_of` and :func:`normalize_redis_url` complete the set; ``settings.py`` normalizes
every URL it is given through them.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import unquote, urlsplit

import sqlalchemy

from poolguard.errors import ConfigError

__all__ = [
    "Dialect",
    "dialect_of",
    "libpq_query_hosts",
    "multi_host_as_query",
    "normalize_redis_url",
    "normalize_sql_url",
    "redact",
    "split_scheme",
    "sql_url_text",
]

Dialect = Literal["postgresql", "mysql"]

MASK = "***"
SUPPORTED_SQL = (
    "postgres://, postgresql://, postgresql+psycopg://, postgresql+asyncpg:// (async), "
    "mysql://, mariadb://, "
    "mysql+pymysql://, mysql+aiomysql:// (mariadb+ likewise)"
)
SUPPORTED_REDIS = "redis://, rediss:// or unix://"

_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.\-_]*)://")
# Keys whose value is a secret, in URL query strings and libpq key=value DSNs.
_SECRET_KEYS = r"[A-Za-z_]*(?:password|passwd|pwd|secret|token)[A-Za-z_]*"
_QUERY_SECRET = re.compile(rf"(?i)([?&;]{_SECRET_KEYS}=)[^&#]*")
_DSN_SECRET = re.compile(rf"(?i)(\b{_SECRET_KEYS}\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")

# dialect name as written → (canonical dialect, SQLAlchemy dialect prefix kept in the URL)
_SQL_DIALECTS: dict[str, tuple[Dialect, str]] = {
    "postgres": ("postgresql", "postgresql"),
    "postgresql": ("postgresql", "postgresql"),
    "mysql": ("mysql", "mysql"),
    "mariadb": ("mysql", "mariadb"),
}
_SQL_DRIVERS: dict[Dialect, frozenset[str]] = {
    "postgresql": frozenset({"", "psycopg", "psycopg_async", "asyncpg"}),
    "mysql": frozenset({"", "pymysql", "aiomysql"}),
}


def redact(url_or_dsn: str) -> str:
    """``url_or_dsn`` with every password and secret query value replaced by ``***``.

    Handles ``scheme://user:pass@host``, ``?password=...`` query parameters and libpq
    ``key=value`` DSNs (``password='...'``). Never raises: anything unexpected yields a
    placeholder rather than the original text.
    """
    try:
        text = str(url_or_dsn)
        match = _SCHEME.match(text)
        if match is None:
            return _DSN_SECRET.sub(lambda m: m[1] + MASK, text)
        head, rest = text[: match.end()], text[match.end() :]
        # Query secrets first: a secret value may contain "@", which would otherwise be taken
        # for the end of the userinfo (``?password=a@b`` came out as ``h:***@b``).
        return head + _redact_userinfo(_QUERY_SECRET.sub(lambda m: m[1] + MASK, rest))
    except Exception:  # never let a message about an error become an error itself
        return "<unprintable url>"


def _redact_userinfo(rest: str) -> str:
    # The userinfo ends at the *last* "@": an unencoded password may contain "@", "/", "?" or
    # "#", so no earlier boundary is trustworthy. An "@" in a query value (rare) makes this hide
    # the host too: hiding too much is the safe failure.
    last_at = rest.rfind("@")
    if last_at < 0:
        return rest
    user, colon, _password = rest[:last_at].partition(":")
    return (user + ":" + MASK if colon else rest[:last_at]) + rest[last_at:]


def split_scheme(url: str) -> tuple[str, str]:
    """``("postgresql+psycopg", "user:pw@host/db")``; ConfigError when there is no scheme."""
    match = _SCHEME.match(url)
    if match is None:
        raise ConfigError(
            f"{redact(url)!r} is not a URL: expected scheme://..., one of {SUPPORTED_SQL}",
        )
    return match[1].lower(), url[match.end() :].strip()


def _sql_parts(url: str, variable: str) -> tuple[Dialect, str, str, str]:
    """(canonical dialect, dialect prefix, driver, rest) of a SQL URL, or ConfigError."""
    try:
        scheme, rest = split_scheme(url)
    except ConfigError as exc:
        raise ConfigError(f"{variable}: {exc.message}", variable=variable) from None
    name, _, driver = scheme.partition("+")
    known = _SQL_DIALECTS.get(name)
    if known is None or driver not in _SQL_DRIVERS[known[0]]:
        hint = ""
        if driver in {"psycopg2", "pg8000", "mysqldb", "asyncmy", "mysqlconnector"}:
            hint = f" (poolguard wraps psycopg 3, asyncpg, PyMySQL and aiomysql, not {driver})"
        raise ConfigError(
            f"{variable}={redact(url)!r} has an unsupported scheme {scheme + '://'!r}{hint}; "
            f"supported: {SUPPORTED_SQL}",
            variable=variable,
        )
    return known[0], known[1], driver, rest


def sql_url_text(url: object) -> object:
    """A SQLAlchemy ``URL`` object as the text poolguard works on (password included: it is
    only ever shown through :func:`redact`); anything else unchanged."""
    if isinstance(url, sqlalchemy.URL):
        return url.render_as_string(hide_password=False)
    return url


def normalize_sql_url(
    url: str,
    *,
    async_: bool = False,
    variable: str = "DATABASE_URL",
    keep_async_driver: bool = False,
    async_driver: str = "psycopg",
) -> str:
    """The SQLAlchemy URL poolguard uses for ``url`` in sync or async mode.

    ``postgres://u:p@h/db`` → ``postgresql+psycopg://u:p@h/db`` (both modes), or
    ``postgresql+asyncpg://u:p@h/db`` in async mode with ``async_driver="asyncpg"``;
    ``postgresql+psycopg_async://`` and ``postgresql+asyncpg://`` name their async driver: they
    stay as written in async mode (``engine.url`` shows what the user wrote; the URL's choice
    wins over ``async_driver``) and with ``keep_async_driver`` (how ``Settings.url`` stores
    it); a sync engine uses psycopg for any of them;
    ``mysql://...`` → ``mysql+pymysql://...`` (sync) or ``mysql+aiomysql://...`` (async);
    ``mariadb://`` keeps SQLAlchemy's MariaDB dialect (``mariadb+pymysql://``).
    """
    dialect, prefix, written, rest = _sql_parts(url, variable)
    example = f"expected e.g. {prefix}://user:password@host/dbname"
    if not rest:
        raise ConfigError(
            f"{variable}={redact(url)!r} has nothing after '://': {example}", variable=variable
        )
    if dialect == "postgresql":
        driver = _postgres_driver(
            written, async_=async_, keep=keep_async_driver, choice=async_driver
        )
        rest = multi_host_as_query(rest)
    else:
        driver = "aiomysql" if async_ else "pymysql"
    normalized = f"{prefix}+{driver}://{rest}"
    try:
        sqlalchemy.make_url(normalized)
    except Exception as exc:  # ArgumentError, ValueError (port): both mean "not a URL"
        raise ConfigError(
            f"{variable}={redact(url)!r} is not a valid URL ({type(exc).__name__}): {example}",
            variable=variable,
        ) from None
    return normalized


def _postgres_driver(written: str, *, async_: bool, keep: bool, choice: str) -> str:
    """psycopg 3 serves both modes (SQLAlchemy picks its async dialect under
    create_async_engine for either spelling); asyncpg only the async one."""
    if written in ("psycopg_async", "asyncpg"):  # the URL names its async driver
        return written if async_ or keep else "psycopg"
    return "asyncpg" if async_ and choice == "asyncpg" else "psycopg"


def multi_host_as_query(rest: str) -> str:
    """libpq's multi-host form (``u:p@h1:5432,h2:5433/db?q``, what Patroni, RDS and libpq
    documentation show) as SQLAlchemy's (``u:p@/db?host=h1:5432&host=h2:5433&q``): SQLAlchemy
    cannot parse a comma in the netloc (a ValueError on the port), yet hands its own form to
    psycopg as libpq's ``host=h1,h2 port=5432,5433``, in order. Anything else is unchanged."""
    # The userinfo (a password may hold "," or "/") ends at the last "@" before the query.
    query_at = rest.find("?")
    head = rest if query_at < 0 else rest[:query_at]
    start = head.rfind("@") + 1
    cut = re.search(r"[/?#]", rest[start:])
    end = start + cut.start() if cut else len(rest)
    netloc = rest[start:end]
    if "," not in netloc or "[" in netloc:  # one host, or IPv6 literals: left to the user
        return rest
    path, _, query = rest[end:].partition("?")
    hosts = "&".join(f"host={h}" for h in netloc.split(",") if h)
    return f"{rest[:start]}{path or '/'}?{hosts}{'&' + query if query else ''}"


def libpq_query_hosts(rest: str) -> str:
    """The reverse of :func:`multi_host_as_query` for libpq itself (psycopg's own pools):
    libpq's URI takes ``?host=h1,h2&port=p1,p2`` but keeps only the last of repeated
    ``host=`` parameters, and a ``host=h:port`` names a host called "h:port"."""
    path, sep, query = rest.partition("?")
    params = query.split("&") if sep else []
    hosts = [p[len("host=") :] for p in params if p.startswith("host=")]
    if len(hosts) < 2:
        return rest
    names, ports = zip(
        *(
            unquote(h).rpartition(":")[::2] if ":" in unquote(h) else (unquote(h), "")
            for h in hosts
        ),
        strict=True,
    )
    others = [p for p in params if not p.startswith("host=")]
    merged = [f"host={','.join(names)}"]
    if any(ports):
        merged.append(f"port={','.join(ports)}")
    return f"{path}?{'&'.join(merged + others)}"


def dialect_of(url: str, *, variable: str = "DATABASE_URL") -> Dialect:
    """``"postgresql"`` or ``"mysql"`` (MariaDB included) for a supported SQL URL."""
    return _sql_parts(url, variable)[0]


def normalize_redis_url(url: str, *, variable: str = "REDIS_URL") -> str:
    """``url`` checked as a redis-py URL: scheme redis/rediss/unix, numeric port and db."""
    text = url.strip()
    try:
        scheme, rest = split_scheme(text)
    except ConfigError:
        scheme, rest = "", ""
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"{variable}={redact(url)!r} is not a Redis URL: expected {SUPPORTED_REDIS}",
            variable=variable,
        )
    normalized = f"{scheme}://{rest}"
    try:
        parts = urlsplit(normalized)
        _port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ConfigError(
            f"{variable}={redact(url)!r} has an invalid port: expected {scheme}://host:6379/0",
            variable=variable,
        ) from None
    if scheme != "unix":
        _check_redis_db(parts.path, url, variable)
        if not parts.hostname:
            raise ConfigError(
                f"{variable}={redact(url)!r} has no host: expected {scheme}://host:6379/0",
                variable=variable,
            )
    elif not parts.path:
        raise ConfigError(
            f"{variable}={redact(url)!r} has no socket path: expected unix:///path/to/redis.sock",
            variable=variable,
        )
    return normalized


def _check_redis_db(path: str, url: str, variable: str) -> None:
    db = path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError(
            f"{variable}={redact(url)!r}: the database after the host must be a number (/0)",
            variable=variable,
        )
