"""A Flask-SQLAlchemy app whose engines are poolguard's.

    DATABASE_URL=postgres://app:secret@localhost/app POOLGUARD_QUERY_TIMEOUT=2s \
    python examples/flask_sqlalchemy_app.py        # http://127.0.0.1:5000/notes/1

The one change to a Flask-SQLAlchemy app: ``db = PoolguardSQLAlchemy(...)`` instead of
``db = SQLAlchemy(...)``. Flask-SQLAlchemy builds each engine in ``SQLAlchemy._make_engine``
(``sqlalchemy.engine_from_config``); the subclass builds it with ``poolguard.create_engine``
instead, from the same options (``SQLALCHEMY_DATABASE_URI``, ``SQLALCHEMY_ENGINE_OPTIONS``,
``SQLALCHEMY_BINDS``, ``SQLALCHEMY_ECHO``), so models, ``db.session`` and queries are unchanged.
Flask-SQLAlchemy has no public engine-factory option (``SQLALCHEMY_ENGINE_OPTIONS={"creator":
...}`` only replaces the DBAPI connect, not the pool or the statement retries), and marks
``_make_engine`` internal; it has kept this signature since 3.0 (2022), and the test of this
example (tests/integration/frameworks/test_flask_sqlalchemy.py) fails if it changes.

Each bind is a named poolguard database: ``SQLALCHEMY_BINDS={"analytics": ...}`` reads
``POOLGUARD_ANALYTICS_*`` before ``POOLGUARD_*``. A plain Flask app with a ``sessionmaker`` needs
no subclass: ``engine = poolguard.create_engine()`` (see examples/flask_app.py).

Reads that meet a dead connection (server restart, failover, a killed session, an idle cut)
are retried on a fresh one; writes go through ``poolguard.run_transaction``, which re-runs the
whole unit after a deadlock, a serialization failure or a connection lost before COMMIT.
"""

from __future__ import annotations

import os
from typing import Any

import flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, String, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import poolguard


class PoolguardSQLAlchemy(SQLAlchemy):
    """Flask-SQLAlchemy, with every engine made by ``poolguard.create_engine``."""

    def _make_engine(
        self, bind_key: str | None, options: dict[str, Any], app: flask.Flask
    ) -> Engine:
        options = dict(options)
        url = options.pop("url")
        if isinstance(url, URL):  # a URL object keeps the password only when rendered so
            url = url.render_as_string(hide_password=False)
        # A bind's settings: POOLGUARD_<BIND>_QUERY_TIMEOUT... before POOLGUARD_QUERY_TIMEOUT...
        return poolguard.create_engine(url, name=bind_key, **options)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_flask_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(500))


def create_app(
    config: dict[str, Any] | None = None, db_class: type[SQLAlchemy] = PoolguardSQLAlchemy
) -> flask.Flask:
    """The app; ``SQLALCHEMY_DATABASE_URI`` defaults to DATABASE_URL."""
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL")
    app.config.update(config or {})
    db = db_class(app, model_class=Base)

    @app.get("/notes/<int:note_id>")
    def read_note(note_id: int) -> Any:
        note = db.session.get(Note, note_id)  # a read: retried on a fresh connection if lost
        if note is None:
            flask.abort(404)
        return {"id": note.id, "body": note.body}

    @app.post("/notes")
    def write_note() -> Any:
        body = str(flask.request.get_json()["body"])

        def add(session: Session) -> int:  # may run more than once: database work only
            note = Note(body=body)
            session.add(note)
            session.flush()
            return note.id

        note_id = poolguard.run_transaction(db.session(), add)
        return {"id": note_id}, 201

    @app.get("/notes")
    def list_notes() -> Any:
        notes = db.session.scalars(select(Note).order_by(Note.id)).all()
        return [{"id": n.id, "body": n.body} for n in notes]

    @app.get("/poolguard")
    def pool_stats() -> Any:
        stats = poolguard.stats(db.engine)
        return {k: stats[k] for k in ("connects", "disconnects", "retries", "checked_out")}

    with app.app_context():
        db.create_all()
    return app


if __name__ == "__main__":
    create_app().run()
