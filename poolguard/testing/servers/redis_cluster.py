"""A throwaway Redis Cluster: N masters + N replicas, real ``redis-server`` processes.

::

    with RedisClusterTopology() as cluster:      # 3 masters + 3 replicas, ~1-2 s to start
        client = poolguard.redis.cluster_from_url(cluster.url)
        old = cluster.master_for_key("k")
        new = cluster.failover(old)              # CLUSTER FAILOVER on its replica
        cluster.failover(new, kill=True)         # SIGKILL the master: the replica takes over
        cluster.migrate_slots(src, dst, 100)     # resharding (MOVED/ASK for clients)

Each node is a :class:`~poolguard.testing.servers.redis.RedisServer` with
``cluster-enabled yes``; ``redis-cli --cluster create`` joins them and assigns slots and
replicas. ``cluster-node-timeout`` is short (1 s by default) so a killed master is replaced in
a few seconds. Standard library only (the nodes are driven with the tiny RESP client).
"""

from __future__ import annotations

import binascii
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from poolguard.testing.servers._base import ServerStartError
from poolguard.testing.servers._system import HOST, find_binary
from poolguard.testing.servers.redis import INSTALL, RedisServer, RespValue

__all__ = ["ClusterNode", "RedisClusterTopology", "key_slot"]

DEFAULT_NODE_TIMEOUT_MS = 1000
SETTLE_TIMEOUT = 60.0
POLL = 0.05
SLOTS = 16384


def key_slot(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (CRC16/XMODEM of the hash tag, mod 16384)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return _crc16(data) % SLOTS


def _crc16(data: bytes) -> int:
    # binascii.crc_hqx with initial value 0 is CRC16/XMODEM: exactly Redis's key hash.
    return binascii.crc_hqx(data, 0)


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    role: str  # "master" or "slave"
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    failed: bool


class RedisClusterTopology:
    """``masters`` masters with ``replicas`` replicas each, on free loopback ports."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
        config: dict[str, str] | None = None,
    ) -> None:
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.cli = find_binary(["redis-cli"], INSTALL)
        base = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout_ms),
            # A replica may be promoted however long it was cut off (tests kill masters).
            "cluster-replica-validity-factor": "0",
            **(config or {}),
        }
        self.nodes = [RedisServer(config=base) for _ in range(masters * (1 + replicas))]
        self.startup_seconds: float | None = None
        """How long :meth:`start` took (processes, ``--cluster create``, all nodes ``ok``)."""

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RedisClusterTopology:
        began = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            self._cli(
                "--cluster", "create", *addresses,
                "--cluster-replicas", str(self.n_replicas), "--cluster-yes",
            )  # fmt: skip
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` of the first node (a startup node; any would do)."""
        return f"redis://{HOST}:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.nodes]

    def node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    # -- state ------------------------------------------------------------------------------
    def command(self, node: RedisServer, *args: str | int) -> RespValue:
        return node.command(*args)

    def cluster_nodes(self, via: RedisServer | None = None) -> list[ClusterNode]:
        """``CLUSTER NODES`` as seen by ``via`` (default: any running node)."""
        source = via or next(n for n in self.nodes if n.running)
        text = _text(source.command("CLUSTER", "NODES"))
        return [_parse_node(line) for line in text.splitlines() if line.strip()]

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters owning slots (in their own view)."""
        return [n for n in self.nodes if n.running and self._role(n) == "master" and self._owns(n)]

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of ``master`` (as the replica itself reports it)."""
        for node in self.nodes:
            if node is master or not node.running:
                continue
            info = _info(node.command("INFO", "replication"))
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return node
        raise LookupError(f"no running replica of {master!r}")

    def master_for_key(self, key: str | bytes) -> RedisServer:
        slot = key_slot(key)
        for entry in self.cluster_nodes():
            serves = any(lo <= slot <= hi for lo, hi in entry.slots)
            if entry.role == "master" and not entry.failed and serves:
                return self.node(entry.port)
        raise LookupError(f"no master serves slot {slot}")

    def _role(self, node: RedisServer) -> str:
        return str(_info(node.command("INFO", "replication")).get("role", ""))

    def _owns(self, node: RedisServer) -> bool:
        me = next((e for e in self.cluster_nodes(node) if e.port == node.port), None)
        return me is not None and bool(me.slots)

    def healthy(self) -> bool:
        """Every running node says ``cluster_state:ok``, agrees on all masters, and every
        master has its replicas connected."""
        running = [n for n in self.nodes if n.running]
        try:
            for node in running:
                if _info(node.command("CLUSTER", "INFO")).get("cluster_state") != "ok":
                    return False
            for node in running:
                info = _info(node.command("INFO", "replication"))
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            views = {_masters_view(self.cluster_nodes(node)) for node in running}
        except (OSError, RuntimeError):
            return False
        return len(views) == 1

    def wait_healthy(self, timeout: float = SETTLE_TIMEOUT) -> float:
        """Wait for :meth:`healthy`; returns the seconds it took."""
        return _wait(self.healthy, timeout, "the cluster did not become healthy")

    # -- faults ---------------------------------------------------------------------------
    def failover(
        self, master: RedisServer, *, kill: bool = False, timeout: float = SETTLE_TIMEOUT
    ) -> RedisServer:
        """Make a replica of ``master`` the master of its slots; returns the new master.

        ``kill=False``: ``CLUSTER FAILOVER`` on the replica (coordinated: the old master stops
        accepting writes, the replica catches up, then takes over; no write is lost).
        ``kill=True``: SIGKILL the master; its replica is elected after
        ``cluster-node-timeout``. The killed node stays down until :meth:`revive`.
        """
        replica = self.replica_of(master)
        if kill:
            master._shutdown(graceful=False)
        else:
            replica.command("CLUSTER", "FAILOVER")

        def promoted() -> bool:
            views = [self.cluster_nodes(n) for n in self.nodes if n.running]
            return all(
                any(e.port == replica.port and e.role == "master" and e.slots for e in view)
                for view in views
            ) and all(
                _info(n.command("CLUSTER", "INFO")).get("cluster_state") == "ok"
                for n in self.nodes
                if n.running
            )

        _wait(promoted, timeout, f"{replica!r} was not promoted")
        return replica

    def revive(self, node: RedisServer, timeout: float = SETTLE_TIMEOUT) -> None:
        """Start a killed node again: it rejoins as a replica of whoever owns its old slots."""
        node.start()
        self.wait_healthy(timeout)

    def migrate_slots(self, source: RedisServer, target: RedisServer, count: int) -> None:
        """``redis-cli --cluster reshard``: move ``count`` slots (and their keys) from
        ``source`` to ``target`` while clients run (they see ASK, then MOVED)."""
        ids = {e.port: e.node_id for e in self.cluster_nodes()}
        self._cli(
            "--cluster", "reshard", f"{HOST}:{source.port}",
            "--cluster-from", ids[source.port], "--cluster-to", ids[target.port],
            "--cluster-slots", str(count), "--cluster-yes", "--cluster-pipeline", "100",
        )  # fmt: skip

    def _cli(self, *args: str) -> str:
        result = subprocess.run(
            [self.cli, *args],
            capture_output=True,
            text=True,
            timeout=SETTLE_TIMEOUT,
            check=False,
        )
        if result.returncode != 0 or "[ERR]" in result.stdout:
            raise ServerStartError(
                f"redis-cli {' '.join(args[:2])} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        return result.stdout

    @contextmanager
    def killed(self, master: RedisServer) -> Iterator[RedisServer]:
        """Kill ``master`` (its replica takes over), yield the new master, revive the old one."""
        new = self.failover(master, kill=True)
        try:
            yield new
        finally:
            self.revive(master)


def _text(value: RespValue) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(value: RespValue) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _text(value).splitlines():
        key, sep, rest = line.partition(":")
        if sep:
            out[key.strip()] = rest.strip()
    return out


def _parse_node(line: str) -> ClusterNode:
    # <id> <ip:port@cport> <flags> <master> <ping-sent> <pong-recv> <epoch> <link> <slot> ...
    fields = line.split()
    port = int(fields[1].split("@", 1)[0].rsplit(":", 1)[1])
    flags = set(fields[2].split(","))
    role = "master" if "master" in flags else "slave"
    slots: list[tuple[int, int]] = []
    for item in fields[8:]:
        if item.startswith("["):
            continue  # a slot being migrated/imported
        lo, _, hi = item.partition("-")
        slots.append((int(lo), int(hi or lo)))
    return ClusterNode(
        node_id=fields[0],
        port=port,
        role=role,
        master_id=None if fields[3] == "-" else fields[3],
        slots=tuple(slots),
        failed="fail" in flags or "fail?" in flags,
    )


def _masters_view(nodes: Sequence[ClusterNode]) -> frozenset[tuple[int, tuple[Any, ...]]]:
    return frozenset((n.port, n.slots) for n in nodes if n.role == "master" and n.slots)


def _wait(condition: Callable[[], bool], timeout: float, message: str) -> float:
    began = time.monotonic()
    end = began + timeout
    while True:
        try:
            if condition():
                return time.monotonic() - began
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > end:
            raise ServerStartError(f"{message} within {timeout:.0f}s")
        time.sleep(POLL)
