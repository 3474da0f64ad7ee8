"""asyncio: a guarded redis.asyncio.Redis, a deadline per request, pub/sub that survives drops.

REDIS_URL=redis://localhost:6379/0 python examples/redis_async.py
"""

from __future__ import annotations

import asyncio
import os
from contextlib import ExitStack

import poolguard
import poolguard.redis


async def main(url: str) -> None:
    r = poolguard.redis.async_from_url(url, decode_responses=True)  # a real redis.asyncio.Redis

    async with poolguard.deadline(0.25):  # e.g. one web request's budget for Redis
        await r.set("session:1", "alice", ex=3600)
        print("GET ->", await r.get("session:1"))

    # Opt-in: ride out drops and resubscribe; each gap (messages lost meanwhile) is reported.
    # By default a drop raises ConnectionError, as in redis-py, and the next read resubscribes.
    pubsub = r.pubsub(reconnect=True, on_resubscribe=lambda gap: print("gap ->", gap.seconds))
    await pubsub.subscribe("news")
    await r.publish("news", "hello")
    for _ in range(20):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            print("message ->", message["data"])
            break
    await pubsub.aclose()

    print(
        "stats:", {k: v for k, v in poolguard.redis.stats(r).items() if k in ("size", "requests")}
    )
    await r.aclose()


if __name__ == "__main__":
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if not url:
            from poolguard.testing import RedisServer

            url = stack.enter_context(RedisServer()).url
        asyncio.run(main(url))
