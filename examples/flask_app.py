"""A Flask app whose every request has a time budget: poolguard.web's WSGI middleware.

    DATABASE_URL=postgres://app:secret@localhost/app POOLGUARD_REQUEST_DEADLINE=2s \
    python examples/flask_app.py            # http://127.0.0.1:5000/notes

Each request runs under ``poolguard.deadline(2s)``: waiting for a pool slot, connecting, every
statement, every retry and the streamed body of ``/notes.txt`` all end by then. A client may ask
for less with ``X-Request-Timeout: 0.5`` (seconds) or ``grpc-timeout: 500m``, never for more. When
the budget runs out the database call raises poolguard's timeout error, which
``install_error_handlers`` answers with 504 (a query, unit of work or connect that ran out of time)
or 503 (no pool slot in time, circuit breaker open).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import poolguard
from poolguard.web import WSGIDeadlineMiddleware, install_error_handlers


def create_app(engine: Engine | None = None) -> Flask:
    """The app; ``engine`` defaults to DATABASE_URL and the POOLGUARD_* settings."""
    engine = engine or poolguard.create_engine()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text)"))
    sessions = sessionmaker(engine)

    app = Flask(__name__)
    # The budget: POOLGUARD_REQUEST_DEADLINE (required: a bad or missing value fails here, at
    # start-up). Both budget headers are opt-in; trust them from your own front-end only.
    app.wsgi_app = WSGIDeadlineMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, headers=["x-request-timeout", "grpc-timeout"]
    )
    install_error_handlers(app)  # PoolguardError -> 503/504 JSON

    @app.get("/notes")
    def list_notes() -> dict[str, Any]:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, body FROM notes ORDER BY id")).all()
        return {"notes": [{"id": row.id, "body": row.body} for row in rows]}

    @app.post("/notes")
    def add_note() -> tuple[dict[str, Any], int]:
        body = str((request.get_json(silent=True) or {}).get("body", ""))

        def insert(session: Session) -> int:  # may run more than once: database work only
            return int(
                session.execute(
                    text("INSERT INTO notes (body) VALUES (:b) RETURNING id"), {"b": body}
                ).scalar_one()
            )

        return {"id": poolguard.run_transaction(sessions, insert)}, 201

    @app.get("/notes.txt")
    def stream_notes() -> Response:
        def lines() -> Iterator[str]:
            # Sent after the view returned: still under the request's deadline.
            with engine.connect() as conn:
                for row in conn.execute(text("SELECT body FROM notes ORDER BY id")):
                    yield f"{row.body}\n"

        return Response(lines(), mimetype="text/plain")

    return app


if __name__ == "__main__":
    os.environ.setdefault("POOLGUARD_REQUEST_DEADLINE", "2s")
    create_app().run(threaded=True)
