"""A Celery worker task that moves money between accounts with ``poolguard.run_transaction``.

    DATABASE_URL=postgres://app:secret@db/app CELERY_BROKER_URL=redis://cache:6379/0 \
    POOLGUARD_JOB_DEADLINE=30 celery -A celery_app worker --pool threads -c 8

    >>> from celery_app import app, new_transfer_id
    >>> app.tasks["transfer"].delay(new_transfer_id(), 1, 2, 50).get()
    {'transfer_id': '...', 'applied': True}

What each layer does:

- ``poolguard.run_transaction`` re-runs the unit after a deadlock, a serialization failure or a
  connection lost before COMMIT; with ``resolve_ambiguous=True`` (PostgreSQL only: it looks the
  transaction up with ``pg_xact_status``) a COMMIT whose reply was lost is answered from the
  server instead of raising ``AmbiguousResultError``;
- ``poolguard.web.job_deadline`` bounds each run of the task (pool wait, connects, statements,
  re-runs) as a request deadline bounds a request;
- Celery's ``autoretry_for`` runs the task again later for what a retry *later* may fix: no pool
  slot (``PoolTimeout``), the server unreachable (``ConnectTimeout``, ``CircuitOpenError``), and,
  on MariaDB/MySQL, a COMMIT of unknown outcome (``AmbiguousResultError``).

A task retry (and, with ``acks_late``, a redelivery after a worker died mid-task) runs the whole
task again, outside any transaction: it is safe only when the unit is idempotent. Here it is by
construction: the caller names each transfer (``transfer_id``, a unique key), and the unit
records the id in the same transaction as the balance changes, so a second run finds it and
changes nothing. Without such an id, a retry after a lost COMMIT (or a worker killed after its
COMMIT, before the ack) would move the money twice.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import poolguard
from poolguard.web import job_deadline

#: Each run of a task gets this budget (seconds) for its database work.
JOB_DEADLINE = float(os.environ.get("POOLGUARD_JOB_DEADLINE", "30"))

#: Errors a later run may not meet. Not QueryTimeout/TransactionTimeout: a unit too slow for its
#: budget is likely to be too slow again, and re-running it adds load to a struggling server.
RETRY_LATER = (
    poolguard.PoolTimeout,
    poolguard.ConnectTimeout,
    poolguard.CircuitOpenError,
    poolguard.AmbiguousResultError,  # safe to retry only because the unit is idempotent
)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS wallets (id integer PRIMARY KEY, balance bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS wallet_transfers (id varchar(32) PRIMARY KEY, src integer NOT NULL,"
    " dst integer NOT NULL, amount bigint NOT NULL)",
)


def new_transfer_id() -> str:
    """The caller makes the id, once, before sending the task: every run shares it."""
    return uuid.uuid4().hex


def create_celery(engine: Engine | None = None, **conf: Any) -> Celery:
    """The Celery app with its ``transfer`` task; ``engine`` defaults to DATABASE_URL and the
    POOLGUARD_* settings, ``conf`` updates Celery's settings (broker_url, result_backend...)."""
    engine = engine or poolguard.create_engine()  # was: sqlalchemy.create_engine(DATABASE_URL)
    with engine.begin() as conn:
        for ddl in SCHEMA:
            conn.execute(text(ddl))
    sessions = sessionmaker(engine)
    # Only PostgreSQL can look up a lost COMMIT's outcome (run_transaction refuses it elsewhere).
    resolve = engine.dialect.name == "postgresql"

    app = Celery("poolguard_example")
    app.conf.update(
        broker_url=os.environ.get("CELERY_BROKER_URL", "memory://"),
        result_backend=os.environ.get("CELERY_RESULT_BACKEND", "cache+memory://"),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Ack after the task ran: a worker lost mid-task has its task delivered again (so the
        # unit must be idempotent, see the module docstring) instead of it being dropped.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One task at a time per worker process slot: a prefetched task would wait out another
        # task's run, spending its deadline in the queue of the worker, not of the database.
        worker_prefetch_multiplier=1,
    )
    app.conf.update(conf)

    @app.task(
        name="transfer",
        autoretry_for=RETRY_LATER,
        retry_backoff=True,  # 1 s, 2 s, 4 s... with jitter: let the server recover
        retry_backoff_max=60,
        max_retries=5,
    )
    @job_deadline(JOB_DEADLINE)
    def transfer(transfer_id: str, src: int, dst: int, amount: int) -> dict[str, Any]:
        def move(session: Session) -> bool:  # may run more than once: database work only
            seen = session.execute(
                text("SELECT 1 FROM wallet_transfers WHERE id = :id"), {"id": transfer_id}
            ).first()
            if seen is not None:
                return False  # an earlier run (a retry, a redelivery) applied it
            session.execute(
                text(
                    "INSERT INTO wallet_transfers (id, src, dst, amount) VALUES (:id, :s, :d, :a)"
                ),
                {"id": transfer_id, "s": src, "d": dst, "a": amount},
            )
            # In account order: two opposite transfers at once then queue, not deadlock.
            for account, delta in sorted(((src, -amount), (dst, amount))):
                session.execute(
                    text("UPDATE wallets SET balance = balance + :d WHERE id = :id"),
                    {"d": delta, "id": account},
                )
            return True  # run_transaction commits

        applied = poolguard.run_transaction(sessions, move, resolve_ambiguous=resolve)
        return {"transfer_id": transfer_id, "applied": applied}

    return app


def __getattr__(name: str) -> Any:
    # `celery -A celery_app worker` reads `app`: built on first access (and kept), so that
    # importing this module (tests, a producer that only sends tasks by name) needs no database.
    if name == "app":
        app = globals()["app"] = create_celery()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
