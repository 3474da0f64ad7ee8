"""pytest plugin (``-p sqlalchemy_plugin``): SQLAlchemy's own suite, its engines built by poolguard.

SQLAlchemy's testing harness makes every engine through ``sqlalchemy.create_engine`` /
``sqlalchemy.ext.asyncio.create_async_engine`` (``testing.db``, ``testing_engine()`` and the
tests' own calls). With ``CONFORMANCE_MODE=guarded`` those names are replaced, before
the suite is collected, by functions that hand the same URL and keywords to
``poolguard.create_engine`` / ``poolguard.create_async_engine`` whenever the URL names the
server under test (the host and port of a ``--dburi``). Mock-DBAPI and SQLite engines
(``"postgresql+psycopg2://foo:bar@localhost/test"``, ``"sqlite://"``) stay plain: they test
SQLAlchemy's own logic without a server, and no user would point poolguard at them.
In ``plain`` mode nothing is replaced; the same run is the baseline.

SQLAlchemy's harness, given an asyncio ``--dburi`` (``postgresql+psycopg_async://``), builds
``testing.db`` with the *sync* ``create_engine`` and drives it through greenlets. poolguard's
sync ``create_engine`` picks the sync driver, so that call becomes
``poolguard.create_async_engine(...).sync_engine``: the very Engine an AsyncEngine wraps.

poolguard itself calls the originals: a context flag lets its inner ``create_engine`` through.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Any

import conformance_outcomes
import pytest

MODE_ENV = "CONFORMANCE_MODE"
# Exit code when the routing did not take (the run would silently test plain SQLAlchemy).
ROUTING_FAILED = 3

_inside_poolguard: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "inside_poolguard", default=False
)


def _guarded() -> bool:
    return os.environ.get(MODE_ENV, "guarded") == "guarded"


def _address(url: Any) -> tuple[str, int] | None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not ours to judge: the original create_engine reports it
        return None
    return (parsed.host, parsed.port) if parsed.host and parsed.port else None


def _is_async_driver(url: Any) -> bool:
    from sqlalchemy.engine import make_url

    return bool(make_url(url).get_dialect().is_async)


def _sync_engine(url: Any, **kwargs: Any) -> Any:
    """poolguard's sync engine, or the sync face of its async one for an asyncio driver."""
    import poolguard.integrations.sqlalchemy as pg

    if _is_async_driver(url):
        return pg.create_async_engine(url, **kwargs).sync_engine
    return pg.create_engine(url, **kwargs)


def _route(
    original: Callable[..., Any], guarded: Callable[..., Any], servers: set[tuple[str, int]]
) -> Callable[..., Any]:
    def create(url: Any, *args: Any, **kwargs: Any) -> Any:
        if _inside_poolguard.get() or _address(url) not in servers:
            return original(url, *args, **kwargs)
        token = _inside_poolguard.set(True)
        try:
            engine = guarded(url, *args, **kwargs)
        finally:
            _inside_poolguard.reset(token)
        _count("guarded")
        return engine

    create.__wrapped__ = original  # type: ignore[attr-defined]
    return create


def _count(key: str) -> None:
    conformance_outcomes.routing[key] = conformance_outcomes.routing.get(key, 0) + 1


def _install_routing(servers: set[tuple[str, int]]) -> None:
    import sqlalchemy
    import sqlalchemy.engine
    import sqlalchemy.ext.asyncio

    # poolguard first: it binds the originals at import time.
    import poolguard.integrations.sqlalchemy as pg

    sync = _route(sqlalchemy.create_engine, _sync_engine, servers)
    sqlalchemy.create_engine = sync  # type: ignore[assignment]
    sqlalchemy.engine.create_engine = sync  # type: ignore[assignment]
    sqlalchemy.ext.asyncio.create_async_engine = _route(  # type: ignore[assignment]
        sqlalchemy.ext.asyncio.create_async_engine, pg.create_async_engine, servers
    )


def pytest_configure(config: pytest.Config) -> None:
    if _guarded():
        dburis = config.getoption("dburi") or []
        _install_routing({a for a in map(_address, dburis) if a is not None})


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """SQLAlchemy's plugin has built ``testing.db`` by now: check it is what the mode says."""
    from sqlalchemy.testing import config

    from poolguard.errors import ConfigError
    from poolguard.integrations.sqlalchemy.engine import guard_of

    try:
        guard_of(config.db)
        is_poolguard = True
    except ConfigError:
        is_poolguard = False
    if is_poolguard != _guarded():
        pytest.exit(
            f"testing.db is {'' if is_poolguard else 'not '}a poolguard engine in "
            f"{os.environ.get(MODE_ENV, 'guarded')} mode: the routing did not take",
            returncode=ROUTING_FAILED,
        )
