"""redact / normalize_sql_url / normalize_redis_url / dialect_of."""

from __future__ import annotations

import pytest
import sqlalchemy
from hypothesis import given
from hypothesis import strategies as st

from poolguard.config import dialect_of, normalize_redis_url, normalize_sql_url, redact
from poolguard.errors import ConfigError

SECRET = "Zq9-s3cr3t"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mysql://app@db/app", "mysql://app@db/app"),
        ("postgresql://db/app?sslmode=require", "postgresql://db/app?sslmode=require"),
        ("postgresql://db/app?password=pw&sslmode=x", "postgresql://db/app?password=***&sslmode=x"),
        ("postgresql://db/app?a=1&sslpassword=pw", "postgresql://db/app?a=1&sslpassword=***"),
        ("host=db user=app password=pw dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password = 'p w\\' x' port=5", "host=db password = *** port=5"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@h/db",
        f"postgresql://u:p@{SECRET}@h/db",
        f"postgresql://u:{SECRET}/x?y#z@h:5432/db?sslmode=require",
        f"postgresql://u:{SECRET}@h/db?application_name=me@corp",
        f"redis://:{SECRET}@h",
        f"rediss://default:{SECRET}@h:6380/1",
        f"mysql+pymysql://u:{SECRET}@h/db?charset=utf8mb4",
        f"postgresql://h/db?PASSWORD={SECRET}",
        # a query secret with "@" in it is not mistaken for the end of a userinfo
        f"redis://h:1/0?password=a@{SECRET}",
        f"postgresql://u:p@h/db?password=x@{SECRET}&sslmode=require",
        f"host=h password={SECRET}",
        f"host=h password='{SECRET} with space'",
        f"  postgresql://u:{SECRET}@h/db",
    ],
)
def test_redact_hides_the_secret(url: str) -> None:
    assert SECRET not in redact(url)


def test_redact_never_raises_on_non_strings() -> None:
    class Evil:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    assert redact(Evil()) == "<unprintable url>"  # type: ignore[arg-type]


@given(st.text(), st.text(alphabet=st.characters(blacklist_characters="@"), min_size=4))
def test_redact_property(prefix: str, password: str) -> None:
    # Whatever surrounds it, a password in the userinfo of a URL never survives redaction.
    url = f"postgresql://user:{password}@host/{prefix}"
    redacted = redact(url)
    assert isinstance(redacted, str)
    if "@" not in prefix:
        assert f":{password}@" not in redacted
        assert redacted.startswith("postgresql://user:***@")


@given(st.text())
def test_redact_total(text: str) -> None:
    assert isinstance(redact(text), str)


@pytest.mark.parametrize(
    ("url", "sync", "async_"),
    [
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        (
            "postgresql://h/db?sslmode=require&application_name=web",
            "postgresql+psycopg://h/db?sslmode=require&application_name=web",
            "postgresql+psycopg://h/db?sslmode=require&application_name=web",
        ),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        (
            "postgresql+psycopg_async://h/db",
            "postgresql+psycopg://h/db",
            "postgresql+psycopg_async://h/db",  # kept for an async engine: engine.url as written
        ),
        (
            "mysql://u:p@h:3306/db",
            "mysql+pymysql://u:p@h:3306/db",
            "mysql+aiomysql://u:p@h:3306/db",
        ),
        ("mysql+pymysql://h/db", "mysql+pymysql://h/db", "mysql+aiomysql://h/db"),
        ("mysql+aiomysql://h/db", "mysql+pymysql://h/db", "mysql+aiomysql://h/db"),
        (
            "mariadb://h/db?charset=utf8mb4",
            "mariadb+pymysql://h/db?charset=utf8mb4",
            "mariadb+aiomysql://h/db?charset=utf8mb4",
        ),
        ("MariaDB+PyMySQL://h/db", "mariadb+pymysql://h/db", "mariadb+aiomysql://h/db"),
        ("  postgres://h/db  ", "postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        # asyncpg serves async engines only: a sync engine on the same URL uses psycopg.
        (
            "postgresql+asyncpg://u:p@h/db",
            "postgresql+psycopg://u:p@h/db",
            "postgresql+asyncpg://u:p@h/db",
        ),
    ],
)
def test_normalize_sql_url(url: str, sync: str, async_: str) -> None:
    assert normalize_sql_url(url, async_=False) == sync
    assert normalize_sql_url(url, async_=True) == async_
    # SQLAlchemy itself accepts every normalized form.
    sqlalchemy.make_url(async_).get_dialect()
    sqlalchemy.make_url(sync).get_dialect()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("sqlite:///x.db", "unsupported scheme 'sqlite://'"),
        ("oracle://h/db", "unsupported scheme"),
        ("postgresql+psycopg2://h/db", "not psycopg2"),
        ("mysql+mysqldb://h/db", "not mysqldb"),
        ("redis://h", "unsupported scheme"),
        ("h/db", "not a URL"),
        ("postgres://", "nothing after"),
        ("postgresql://u:pw@h:port/db", "not a valid URL"),
    ],
)
def test_normalize_sql_url_rejects(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        normalize_sql_url(url, async_=False)
    assert info.value.variable == "DATABASE_URL"
    assert "postgres" in str(info.value).split(":", 1)[1]  # says what is expected


def test_rejection_redacts_password() -> None:
    with pytest.raises(ConfigError) as info:
        normalize_sql_url(f"postgresql+pg8000://u:{SECRET}@h/db", async_=True, variable="X_URL")
    assert SECRET not in str(info.value)
    assert info.value.variable == "X_URL"


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("postgres://h", "postgresql"),
        ("postgresql+psycopg://h", "postgresql"),
        ("mysql://h", "mysql"),
        ("mariadb+aiomysql://h", "mysql"),
    ],
)
def test_dialect_of(url: str, dialect: str) -> None:
    assert dialect_of(url) == dialect


@pytest.mark.parametrize(
    "url",
    [
        "redis://h",
        "redis://:pw@h:6379/0",
        "rediss://u:pw@h:6380/2",
        "unix:///tmp/r.sock?db=1",
        "REDIS://h:1/0",
    ],
)
def test_normalize_redis_url(url: str) -> None:
    assert normalize_redis_url(url).lower().startswith(url.split("://")[0].lower())


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://h", "not a Redis URL"),
        ("redis://h:port", "invalid port"),
        ("redis://h:99999", "invalid port"),
        ("redis://h/db0", "must be a number"),
        ("redis://", "no host"),
        ("unix://", "no socket path"),
        ("h:6379", "not a Redis URL"),
    ],
)
def test_normalize_redis_url_rejects(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        normalize_redis_url(url)
    assert info.value.variable == "REDIS_URL"


@given(st.text())
def test_normalizers_raise_only_config_error(text: str) -> None:
    for call in (
        lambda: normalize_sql_url(text, async_=False),
        lambda: normalize_sql_url(text, async_=True),
        lambda: normalize_redis_url(text),
        lambda: dialect_of(text),
    ):
        try:
            call()
        except ConfigError:
            pass
