"""A counter and a cache through poolguard's guarded redis.Redis.

    export REDIS_URL=redis://localhost:6379/0 POOLGUARD_REDIS_QUERY_TIMEOUT=100ms
    python examples/redis_sync.py

Without REDIS_URL a throwaway server is started (poolguard.testing.RedisServer).
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import redis

import poolguard
import poolguard.redis


def main(url: str) -> None:
    r = poolguard.redis.from_url(url, decode_responses=True)  # a real redis.Redis
    r.set("greeting", "hello")  # retried on a lost reply: SET is idempotent
    print("GET ->", r.get("greeting"))

    try:
        views = r.incr("views")  # never sent twice after it may have been applied
        print("INCR ->", views)
    except poolguard.AmbiguousResultError as exc:  # also a redis.exceptions.TimeoutError
        print("the INCR may or may not have been applied:", exc)

    with poolguard.deadline(0.5):  # everything below, retries included, within 0.5 s
        pipe = r.pipeline()
        pipe.set("a", 1).expire("a", 60).get("a")  # every command idempotent: replayable
        print("pipeline ->", pipe.execute())

    with poolguard.redis.idempotent():  # the caller vouches: this script is safe to run twice
        print("EVAL ->", r.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "k", "v"))

    try:
        r.lpush("jobs", "job-1")
    except redis.exceptions.ConnectionError as exc:  # drop-in: existing handlers keep working
        print("push failed:", exc)

    print(
        "stats:",
        {
            k: v
            for k, v in poolguard.redis.stats(r).items()
            if k in ("size", "retries", "ambiguous")
        },
    )
    r.close()


if __name__ == "__main__":
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if not url:
            from poolguard.testing import RedisServer

            url = stack.enter_context(RedisServer()).url
        main(url)
