"""Multi-host PostgreSQL URLs (libpq's ``h1:p1,h2:p2``) survive normalization.

SQLAlchemy cannot parse a comma in the netloc (the old code raised ConfigError for every
multi-host URL); poolguard rewrites it to SQLAlchemy's ``?host=h1:p1&host=h2:p2`` form, which
SQLAlchemy hands to psycopg as libpq's ``host=h1,h2 port=p1,p2``, in order.
"""

from __future__ import annotations

import pytest
import sqlalchemy

from poolguard.config.address import address_of
from poolguard.config.urls import libpq_query_hosts, multi_host_as_query, normalize_sql_url, redact


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        (
            "postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
            "postgresql+psycopg://u:pw@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
        ),
        ("postgres://u@h1,h2/db", "postgresql+psycopg://u@/db?host=h1&host=h2"),
        ("postgresql://u@h1:1,h2:2", "postgresql+psycopg://u@/?host=h1:1&host=h2:2"),
        # A password holding "," "/" or "@" (unencoded): the userinfo ends at the last "@".
        (
            "postgresql://u:a,b/c@d@h1:1,h2:2/db",
            "postgresql+psycopg://u:a,b/c@d@/db?host=h1:1&host=h2:2",
        ),
        ("postgresql://u:pw@h:5432/db?x=1", "postgresql+psycopg://u:pw@h:5432/db?x=1"),
    ],
)
def test_multi_host_urls_normalize(url: str, normalized: str) -> None:
    assert normalize_sql_url(url) == normalized


def test_sqlalchemy_hands_the_hosts_to_psycopg_in_order() -> None:
    url = sqlalchemy.make_url(
        normalize_sql_url("postgresql://u:pw@a:5432,b:5433,c:5434/db?target_session_attrs=primary")
    )
    dialect = url.get_dialect()()
    _, opts = dialect.create_connect_args(url)
    assert opts["host"] == "a,b,c"
    assert opts["port"] == "5432,5433,5434"
    assert opts["target_session_attrs"] == "primary"


def test_mysql_urls_and_ipv6_are_left_alone() -> None:
    assert multi_host_as_query("u@[::1]:5432,[::2]:5433/db") == "u@[::1]:5432,[::2]:5433/db"
    assert normalize_sql_url("mysql://u:p@h:3306/db") == "mysql+pymysql://u:p@h:3306/db"


def test_address_and_redaction_of_a_multi_host_url() -> None:
    url = normalize_sql_url("postgresql://u:secret@h1:5432,h2:5433/db")
    assert address_of(url) == "h1:5432,h2:5433"
    assert "secret" not in redact(url)


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        (
            "postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write",
            {"host": "h1,h2", "port": "5432,5433", "target_session_attrs": "read-write"},
        ),
        ("postgresql://u:pw@h1,h2/db", {"host": "h1,h2"}),
        ("postgresql://u:pw@h:5432/db", {"host": "h", "port": "5432"}),
    ],
)
def test_native_pools_get_libpq_hosts(url: str, conninfo: dict[str, str]) -> None:
    """psycopg_pool gets a libpq URI: libpq keeps only the last of repeated ``host=``."""
    from psycopg.conninfo import conninfo_to_dict

    rest = normalize_sql_url(url).split("://", 1)[1]
    parsed = conninfo_to_dict("postgresql://" + libpq_query_hosts(rest))
    assert {k: parsed[k] for k in conninfo} == conninfo
