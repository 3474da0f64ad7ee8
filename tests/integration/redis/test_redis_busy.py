"""A reply sent before execution (BUSY: a script is running) is retried even for INCR."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis_helpers import admin

import poolguard.redis

pytestmark = [pytest.mark.redis, pytest.mark.chaos]

SPIN = "local i = 0 while true do i = i + 1 end"


def busy_server(server: Any, seconds: float) -> threading.Thread:
    """Run an endless script, then SCRIPT KILL it after ``seconds``: BUSY for everyone else."""
    admin(server).config_set("busy-reply-threshold", 50)

    def spin() -> None:
        try:
            admin(server).eval(SPIN, 0)
        except redis.exceptions.ResponseError:
            pass  # killed by SCRIPT KILL

    def kill() -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                admin(server).script_kill()
                return
            except redis.exceptions.ResponseError:
                time.sleep(0.02)  # NOTBUSY: the script has not started yet

    threading.Thread(target=spin, daemon=True).start()
    time.sleep(0.15)
    killer = threading.Timer(seconds, kill)
    killer.start()
    return killer


def test_incr_rejected_with_busy_is_retried_and_applied_once(
    dedicated_server: Any, guarded: Any
) -> None:
    server = dedicated_server("redis")
    # The suite's 10 ms test backoff makes ~11 retries in the 0.4 s of BUSY, more than the
    # retry budget's burst (at the default backoff it would be 3-4): this test is about BUSY.
    client = guarded(server.url, query_timeout="2s", retry_budget="off")
    client.ping()
    killer = busy_server(server, 0.4)
    assert client.incr("n") == 1
    killer.join()
    assert int(admin(server).get("n")) == 1
    assert poolguard.redis.stats(client)["retries_by_reason"].get("busy_script", 0) >= 1


async def test_async_incr_rejected_with_busy_is_retried(
    dedicated_server: Any, aguarded: Any
) -> None:
    server = dedicated_server("redis")
    client = aguarded(server.url, query_timeout="2s", retry_budget="off")  # see the sync test
    await client.ping()
    killer = busy_server(server, 0.4)
    assert await client.incr("n") == 1
    killer.join()
    assert int(admin(server).get("n")) == 1
