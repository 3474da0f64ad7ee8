"""Helpers shared by the Redis integration tests (this folder is on sys.path under pytest)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis


def admin(server: Any) -> redis.Redis:
    """A plain redis-py client for setup and checks (never through the fault)."""
    return redis.Redis.from_url(server.admin_url, socket_timeout=10)


def stall(server: Any, seconds: float) -> threading.Thread:
    """``DEBUG SLEEP seconds`` from a second connection: the server answers nobody meanwhile."""

    def run() -> None:
        with admin(server) as client:
            client.execute_command("DEBUG", "SLEEP", seconds)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def in_background(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def kill_by_name(server: Any, name: str) -> int:
    """CLIENT KILL every connection named ``name``, pub/sub ones included (any client type)."""
    killed = 0
    with admin(server) as client:
        for info in client.client_list():
            if info.get("name") == name:
                killed += int(client.client_kill_filter(_id=info["id"]))
    return killed
