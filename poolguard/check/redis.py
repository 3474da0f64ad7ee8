"""Probe a Redis server with redis-py: version, latency (PING), server idle timeout, TLS.

Redis has no per-connection server-side timeouts: every timeout is a client socket setting, so
the table says "client" and the server's answer is the PING itself.

:func:`probe_redis` fills a ``report.BackendReport``; ``runner.py`` calls it under a time bound.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolguard.check.report import BackendReport, measure_latency, warn_server_idle_kill, warn_tls
from poolguard.config import Settings

__all__ = ["probe_redis"]


def probe_redis(settings: Settings, report: BackendReport, op_timeout: float) -> None:
    """Fill ``report`` by connecting to ``settings.url``; raises the driver's error on failure."""
    url = settings.redis_url()
    report.timeout("connect_timeout", settings.connect_timeout, "socket_connect_timeout (client)")
    report.timeout("query_timeout", settings.query_timeout, "socket_timeout (client)")
    report.timeout("tcp_keepalive", settings.tcp_keepalive, "socket_keepalive (client)")
    # No retry: a check must report the first failure, not hide it (redis-py 8 retries 10x
    # when built from host=..., see DESIGN "Known traps").
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.connect_timeout or op_timeout,
        socket_timeout=op_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        _inspect(client, settings, report, url)
    finally:
        client.close()
    report.ok = True


def _inspect(client: redis.Redis, settings: Settings, report: BackendReport, url: str) -> None:
    info = client.info("server")
    report.server = f"Redis {info.get('redis_version', '?')}"
    report.facts["redis_mode"] = info.get("redis_mode")
    measure_latency(report, client.ping)
    parts = urlsplit(url)
    report.tls = parts.scheme == "rediss"
    warn_tls(report, parts.hostname if parts.scheme != "unix" else None)
    try:
        timeout = float(client.config_get("timeout").get("timeout") or 0)
    except redis.RedisError:  # CONFIG is often disabled on managed Redis
        report.facts["server_idle_timeout_s"] = None
        return
    report.facts["server_idle_timeout_s"] = timeout
    warn_server_idle_kill(report, settings, "timeout", timeout)
