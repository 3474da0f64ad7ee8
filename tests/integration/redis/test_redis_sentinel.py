"""Sentinel: master discovery, and a forced failover under load (reads/idempotent writes succeed,
non-idempotent writes are never doubled)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import poolguard.redis
from poolguard.errors import AmbiguousResultError
from poolguard.testing import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

SERVICE = "pgmaster"
FAST_RETRIES: dict[str, Any] = {
    "retry_attempts": 60,
    "retry_backoff_initial": "20ms",
    "retry_backoff_max": "200ms",
    "retry_timeout": "20s",
    "retry_budget": "off",
    "breaker_failures": "off",
    "query_timeout": "500ms",
    "connect_timeout": "300ms",
}


class Topology:
    def __init__(self, master: RedisServer, replica: RedisServer, sentinel_port: int) -> None:
        self.master = master
        self.replica = replica
        self.sentinel_port = sentinel_port

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.sentinel_port)]

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        with self.sentinel() as s:
            return int(s.sentinel_get_master_addr_by_name(SERVICE)[1])

    def wait(self, condition: Any, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if condition():
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("topology did not reach the expected state in time")


def _start_sentinel(master_port: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    binary = shutil.which("redis-sentinel")
    if binary is None:
        pytest.skip("redis-sentinel is not installed (apt-get install -y redis-sentinel)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="poolguard-sentinel-"))
    conf = workdir / "sentinel.conf"
    conf.write_text(
        "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize no",
                "protected-mode no",
                f"dir {workdir}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1",
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, port, workdir


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    master = RedisServer().start()
    replica = RedisServer(config={"replicaof": f"127.0.0.1 {master.port}"}).start()
    proc, port, workdir = _start_sentinel(master.port)
    topo = Topology(master, replica, port)
    try:
        topo.wait(lambda: topo.master_port() == master.port)
        with topo.sentinel() as s:
            topo.wait(lambda: len(s.sentinel_slaves(SERVICE)) == 1)
        yield topo
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        replica.stop()
        master.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_master_is_discovered_through_sentinel(topology: Topology) -> None:
    client = poolguard.redis.from_sentinel(topology.sentinels, SERVICE, **FAST_RETRIES)
    try:
        assert isinstance(client, redis.Redis)
        client.set("sentinel:k", "v")
        assert client.get("sentinel:k") == b"v"
        assert client.connection_pool.get_master_address()[1] == topology.master_port()
    finally:
        client.close()


def test_sentinel_url_is_accepted(topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "REDIS_URL", f"redis+sentinel://127.0.0.1:{topology.sentinel_port}/{SERVICE}/0"
    )
    client = poolguard.redis.from_url(**FAST_RETRIES)
    try:
        assert client.ping()
        assert "sentinel" in repr(client.connection_pool).lower()
    finally:
        client.close()


def test_forced_failover_under_load(topology: Topology) -> None:
    client = poolguard.redis.from_sentinel(topology.sentinels, SERVICE, **FAST_RETRIES)
    old_port = topology.master_port()
    errors: list[BaseException] = []
    acked = ambiguous = sets = 0
    try:
        client.delete("sentinel:n")
        # Replication is asynchronous: wait until the replica has the reset counter.
        time.sleep(0.3)
        with topology.sentinel() as s:
            s.sentinel_failover(SERVICE)
        end = time.monotonic() + 15.0
        after_switch = 0
        while time.monotonic() < end and after_switch < 50:
            try:
                client.set("sentinel:k", "v")  # idempotent: retried across the switch
                sets += 1
                client.incr("sentinel:n")  # READONLY before execution: retried; else ambiguous
                acked += 1
            except AmbiguousResultError:
                ambiguous += 1
            except redis.exceptions.RedisError as exc:
                errors.append(exc)
            # SENTINEL MASTERS (what the client asks) switches once the failover completes.
            if client.connection_pool.master_address not in (None, ("127.0.0.1", old_port)):
                after_switch += 1
            time.sleep(0.005)
        client.set("sentinel:after", "1")
        new_port = client.connection_pool.get_master_address()[1]
        applied = int(client.get("sentinel:n") or 0)
        stats = poolguard.redis.stats(client)
    finally:
        client.close()
    print(
        f"failover {old_port}->{new_port}: sets={sets} acked={acked} ambiguous={ambiguous} "
        f"applied={applied} errors={errors!r} retries={stats['retries_by_reason']}"
    )
    assert errors == []
    assert new_port != old_port
    # Never doubled. (Acked increments can be lost by Redis's asynchronous replication itself.)
    assert applied <= acked + ambiguous


async def test_async_master_is_discovered_through_sentinel(topology: Topology) -> None:
    client = poolguard.redis.async_from_sentinel(topology.sentinels, SERVICE, **FAST_RETRIES)
    try:
        await client.set("sentinel:ak", "v")
        assert await client.get("sentinel:ak") == b"v"
        address = await client.connection_pool.get_master_address()
        assert address[1] == topology.master_port()
    finally:
        await client.aclose()


def test_sentinel_url_parsing() -> None:
    from poolguard.integrations.redis import parse_sentinel_url

    parsed = parse_sentinel_url("redis+sentinel://:pw@s1:26380,s2/mymaster/2")
    assert parsed == {
        "sentinels": [("s1", 26380), ("s2", 26379)],
        "service_name": "mymaster",
        "db": 2,
        "password": "pw",
    }
