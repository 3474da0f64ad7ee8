"""Helpers for the MySQL/MariaDB integration tests to find and KILL exactly this test's
server sessions (the engine factories are in ``tests/integration/conftest.py``).

MariaDB has no client-chosen ``application_name``, so tests kill by ``CONNECTION_ID()``.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import text


def connection_id(conn: Any) -> int:
    return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar())


def kill(server: Any, *ids: int) -> None:
    """``KILL CONNECTION`` each id, as root over the server's Unix socket."""
    server.sql("".join(f"KILL CONNECTION {int(i)};" for i in ids))


def kill_later(server: Any, thread_id: int, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: kill(server, thread_id))
    timer.start()
    return timer
