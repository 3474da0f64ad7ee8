"""examples/flask_sqlalchemy_app.py with Flask's test client against real PostgreSQL and
MariaDB: reads and writes, then every session of the app killed server-side between requests.
The same app on Flask-SQLAlchemy's own engine (the control) answers the first request after
the kill with a 500; poolguard's answers every one."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

pytest.importorskip("flask_sqlalchemy", reason="needs the test extra (pip install .[test])")

from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy_app import PoolguardSQLAlchemy, create_app

_ids = itertools.count(1)


#: Marked like the server fixture it stands for, so that ``-m "not mysql"`` deselects it.
_KINDS = [pytest.param(kind, marks=getattr(pytest.mark, kind)) for kind in ("postgres", "mysql")]


@pytest.fixture(params=_KINDS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_server")


def _app(server: Any, db_class: type[SQLAlchemy]) -> tuple[Any, str | None]:
    """The app and the tag its sessions carry (PostgreSQL: application_name; MariaDB: none,
    the kill then hits every app-user session on the shared server)."""
    tag = None
    url = server.url
    if server.kind == "postgres":
        tag = f"flask_{os.getpid()}_{next(_ids)}"
        url = f"{url}?application_name={tag}"
    options: dict[str, Any] = {"pool_size": 2}
    if db_class is not PoolguardSQLAlchemy:  # plain SQLAlchemy: name the drivers poolguard picks
        scheme, rest = url.split("://", 1)
        url = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}[scheme] + "://" + rest
    if db_class is PoolguardSQLAlchemy:
        options |= {"connect_timeout": 2, "retry_backoff_initial": 0.02}
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "SQLALCHEMY_ENGINE_OPTIONS": options},
        db_class=db_class,
    )
    app.testing = False  # a failing request is a 500, as in production
    return app, tag


def _kill(server: Any, tag: str | None) -> int:
    killed: int = server.kill_connections(application_name=tag)
    return killed


def test_reads_and_writes_survive_session_kills(server: Any) -> None:
    app, tag = _app(server, PoolguardSQLAlchemy)
    client = app.test_client()
    created = client.post("/notes", json={"body": "first"})
    assert created.status_code == 201
    note = created.get_json()["id"]
    assert client.get(f"/notes/{note}").get_json() == {"id": note, "body": "first"}

    for _round in range(3):
        assert _kill(server, tag) >= 1  # the app's idle pooled session
        assert client.get(f"/notes/{note}").status_code == 200  # retried on a fresh session
        assert _kill(server, tag) >= 1
        written = client.post("/notes", json={"body": "again"})  # run_transaction re-runs it
        assert written.status_code == 201, written.get_data(as_text=True)

    bodies = [n["body"] for n in client.get("/notes").get_json()]
    assert bodies.count("again") == 3  # each write applied exactly once
    stats = client.get("/poolguard").get_json()
    assert stats["disconnects"] >= 6
    assert stats["checked_out"] == 0
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def test_control_flask_sqlalchemy_alone_fails_after_a_kill(server: Any) -> None:
    app, tag = _app(server, SQLAlchemy)
    client = app.test_client()
    note = client.post("/notes", json={"body": "x"})
    # The control's write uses poolguard.run_transaction, which needs a poolguard engine.
    assert note.status_code == 500
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        from flask_sqlalchemy_app import Note

        db.session.add(Note(body="control"))
        db.session.commit()
        note_id = db.session.query(Note.id).filter_by(body="control").scalar()
        db.session.remove()
    assert client.get(f"/notes/{note_id}").status_code == 200
    assert _kill(server, tag) >= 1
    assert client.get(f"/notes/{note_id}").status_code == 500  # the killed session, reused
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
