"""A new connection whose session setup gets no reply (the server froze right after the
handshake) fails as a ConnectTimeout naming the server, not as a bare driver error.

The fault is timed by the test: the setup statement is made one that does not answer within
the connect timeout (``pg_sleep``), which is what a server frozen between the handshake and the
setup's reply looks like to the client. Found by the FastAPI chaos run under SIGSTOP (~1 request
in 1 of 3 async runs surfaced "consuming input failed").
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import text

import poolguard
from poolguard.integrations.sqlalchemy import _backend

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

DEADLINE = 1.5
CALLERS = 3


@pytest.fixture
def unanswered_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _backend.PostgresBackend, "setup_sql", lambda self, state, conn: "SELECT pg_sleep(5)"
    )


def _assert_connect_timeout(exc: BaseException, server: Any) -> None:
    assert isinstance(exc, poolguard.ConnectTimeout), repr(exc)
    assert isinstance(exc, sqlalchemy.exc.OperationalError)  # what users already catch
    assert f"{server.host}:{server.port}" in str(exc)
    assert "session setup got no reply" in str(exc) or "deadline" in str(exc)


@pytest.mark.usefixtures("unanswered_setup")
def test_setup_without_reply_is_a_connect_timeout(make_engine: Any, postgres_server: Any) -> None:
    engine = make_engine(postgres_server.url, connect_timeout=0.4)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            with poolguard.deadline(DEADLINE), engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE * 4)
    assert len(errors) == CALLERS
    for exc in errors:
        _assert_connect_timeout(exc, postgres_server)


@pytest.mark.usefixtures("unanswered_setup")
async def test_async_setup_without_reply_is_a_connect_timeout(
    make_async_engine: Any, postgres_server: Any
) -> None:
    engine = make_async_engine(postgres_server.url, connect_timeout=0.4)

    async def caller() -> None:
        async with poolguard.deadline(DEADLINE), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    results = await asyncio.gather(*(caller() for _ in range(CALLERS)), return_exceptions=True)
    for exc in results:
        assert isinstance(exc, BaseException)
        _assert_connect_timeout(exc, postgres_server)
