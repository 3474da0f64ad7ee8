"""Idempotent order intake on MySQL/MariaDB with SQLAlchemy Core, made resilient by poolguard.

    DATABASE_URL=mysql://app:secret@localhost/app \
    POOLGUARD_QUERY_TIMEOUT=2s POOLGUARD_LOCK_TIMEOUT=3s POOLGUARD_CONNECT_TIMEOUT=500ms \
    python examples/mysql_sync.py

``poolguard.create_engine()`` gives a ``mysql+pymysql`` engine (``mariadb://`` works too;
``create_async_engine()`` uses aiomysql) whose idle connections survive ``wait_timeout``, whose
reads are retried after a KILL or a restart, and whose statements are bounded by MariaDB's
``max_statement_time`` (MySQL: ``max_execution_time``) plus a client backstop.

``run_transaction`` re-runs the unit after a deadlock (1213) or a lock wait timeout (1205).
A lost COMMIT reply raises ``AmbiguousResultError``: MySQL cannot be asked afterwards whether
it committed, so the order carries a client-made id under a unique key, and a retry by the
caller after an ambiguous error is harmless (``INSERT IGNORE`` finds the row already there).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, text

import poolguard

SCHEMA = """
CREATE TABLE IF NOT EXISTS example_order (
    id CHAR(32) PRIMARY KEY,
    item VARCHAR(100) NOT NULL,
    qty INT NOT NULL
)"""
STOCK = """
CREATE TABLE IF NOT EXISTS example_stock (item VARCHAR(100) PRIMARY KEY, qty INT NOT NULL)"""


def place_order(conn: Connection, order_id: str, item: str, qty: int) -> bool:
    """One unit of work; may run more than once (no side effects outside the database)."""
    inserted = conn.execute(
        text("INSERT IGNORE INTO example_order VALUES (:id, :item, :qty)"),
        {"id": order_id, "item": item, "qty": qty},
    ).rowcount
    if inserted:  # first time this order is seen: take the stock in the same transaction
        conn.execute(
            text("UPDATE example_stock SET qty = qty - :qty WHERE item = :item"),
            {"item": item, "qty": qty},
        )
    return bool(inserted)


def main() -> None:
    engine = poolguard.create_engine()
    with engine.begin() as conn:
        conn.execute(text(SCHEMA))
        conn.execute(text(STOCK))
        conn.execute(text("INSERT IGNORE INTO example_stock VALUES ('widget', 100)"))
    order_id = uuid.uuid4().hex
    for _ in range(2):  # the second call is what a client retry after a timeout looks like
        try:
            new = poolguard.run_transaction(
                engine, lambda conn: place_order(conn, order_id, "widget", 3)
            )
            print("placed" if new else "already placed", order_id)
        except poolguard.AmbiguousResultError as exc:
            print("outcome unknown, safe to retry with the same id:", exc)
    with engine.connect() as conn:
        print("stock left:", conn.execute(text("SELECT qty FROM example_stock")).scalar())
    print(poolguard.stats(engine)["retries_by_reason"])
    engine.dispose()


if __name__ == "__main__":
    main()
