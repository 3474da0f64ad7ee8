"""Alembic migrations (examples/alembic) through ``poolguard.create_engine(poolclass=NullPool)``,
against real PostgreSQL and MariaDB: upgrade, downgrade, offline SQL, the ``alembic`` command as
users type it, and a migration started while the database refuses connections."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import inspect, text
from sqlalchemy.pool import NullPool

import poolguard

from .conftest import EXAMPLES

alembic_command = pytest.importorskip("alembic.command", reason="needs the test extra")
from alembic.config import Config  # noqa: E402

INI = EXAMPLES / "alembic" / "alembic.ini"


#: Marked like the server fixture it stands for, so that ``-m "not mysql"`` deselects it.
_KINDS = [pytest.param(kind, marks=getattr(pytest.mark, kind)) for kind in ("postgres", "mysql")]


@pytest.fixture(params=_KINDS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list[sqlalchemy.Engine]:
    """The engines env.py makes (poolguard.create_engine(name="migrations"), recorded)."""
    made: list[sqlalchemy.Engine] = []
    real = poolguard.create_engine

    def recording(*args: Any, **kwargs: Any) -> sqlalchemy.Engine:
        engine = real(*args, **kwargs)
        if kwargs.get("name") == "migrations":
            made.append(engine)
        return engine

    monkeypatch.setattr(poolguard, "create_engine", recording)
    return made


def _config() -> Config:
    cfg = Config(str(INI))
    cfg.attributes["configure_logger"] = False  # pytest owns logging here
    return cfg


def _tables(url: str) -> dict[str, list[str]]:
    engine = poolguard.create_engine(url, poolclass=NullPool)
    try:
        found = inspect(engine)
        return {
            name: sorted(c["name"] for c in found.get_columns(name))
            for name in found.get_table_names()
            if name in ("example_note", "alembic_version")
        }
    finally:
        engine.dispose()


@pytest.fixture
def clean(server: Any) -> Iterator[str]:
    """The server's URL with no example tables, before and after."""

    def drop() -> None:
        engine = poolguard.create_engine(server.url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS example_note"))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()

    drop()
    yield server.url
    drop()


def test_upgrade_and_downgrade(
    clean: str, engines: list[sqlalchemy.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", clean)  # as users run it: the app's variable
    monkeypatch.setenv("POOLGUARD_MIGRATIONS_QUERY_TIMEOUT", "off")
    cfg = _config()

    alembic_command.upgrade(cfg, "0001")
    assert _tables(clean) == {"alembic_version": ["version_num"], "example_note": ["id", "title"]}
    alembic_command.upgrade(cfg, "head")
    assert _tables(clean)["example_note"] == ["author", "id", "title"]
    engine = poolguard.create_engine(clean, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, author FROM example_note ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "unknown"), (2, "unknown")]

    alembic_command.downgrade(cfg, "0001")
    assert _tables(clean)["example_note"] == ["id", "title"]
    alembic_command.downgrade(cfg, "base")
    assert _tables(clean) == {"alembic_version": ["version_num"]}

    # Each run was one poolguard engine on NullPool (honoured, guarded), and nothing retried.
    assert len(engines) == 4
    for made in engines:
        assert type(made.pool).__name__ == "GuardedNullPool"
        assert isinstance(made.pool, NullPool)
        stats = poolguard.stats(made)
        assert stats["retries"] == 0
        assert stats["checked_out"] == 0


def test_offline_sql(clean: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", clean)
    alembic_command.upgrade(_config(), "head", sql=True)
    out = capsys.readouterr().out
    assert "CREATE TABLE example_note" in out
    assert "CREATE INDEX ix_example_note_author" in out
    assert _tables(clean) == {}  # nothing ran


def test_pool_keywords_with_nullpool_are_refused(clean: str) -> None:
    with pytest.raises(poolguard.ConfigError, match="pool_size has no effect"):
        poolguard.create_engine(clean, name="migrations", poolclass=NullPool, pool_size=5)


@pytest.mark.postgres
def test_alembic_command_line(postgres_server: Any) -> None:
    """``alembic -c examples/alembic/alembic.ini upgrade head`` in a shell, URL from the env."""
    env = {**os.environ, "DATABASE_URL": postgres_server.url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(INI)]
    try:
        for step in (["upgrade", "head"], ["current"], ["downgrade", "base"]):
            done = subprocess.run(
                [*alembic, *step], env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr[-3000:]
            if step == ["current"]:
                assert "0002 (head)" in done.stdout
    finally:
        engine = poolguard.create_engine(postgres_server.url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS example_note"))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()


class _UpOnFirstRetry(logging.Handler):
    """Brings the proxy back when poolguard logs its first connect retry: the migration started
    while the database refused connections, and is waiting for it."""

    def __init__(self, proxy: Any) -> None:
        super().__init__(logging.INFO)
        self.proxy = proxy
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying after"):
            self.retries += 1
            if self.retries == 1:
                self.proxy.up()


@pytest.mark.postgres
@pytest.mark.chaos
def test_migration_waits_for_a_database_that_refuses_connections(
    postgres_server: Any, fault_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = fault_proxy(postgres_server)
    url = proxy.url(postgres_server.url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("POOLGUARD_MIGRATIONS_RETRY_BACKOFF_INITIAL", "50ms")
    handler = _UpOnFirstRetry(proxy)
    logger = logging.getLogger("poolguard")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        proxy.down()  # deploy time: the database is restarting
        alembic_command.upgrade(_config(), "head")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        proxy.up() if not proxy.is_up else None
    try:
        assert handler.retries >= 1
        assert _tables(postgres_server.url)["example_note"] == ["author", "id", "title"]
    finally:
        alembic_command.downgrade(_config(), "base")
