"""A throwaway Redis: generated config, no persistence, DEBUG enabled (tests use DEBUG SLEEP).

:class:`RedisServer`, with a tiny RESP client (:meth:`RedisServer.command`) so that no
redis-py is needed; the lifecycle and chaos methods are :class:`LocalServer`'s (``_base.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, BinaryIO

from poolguard.testing.servers._base import LocalServer
from poolguard.testing.servers._system import HOST, binary_version, find_binary

__all__ = ["RedisServer", "resp_command"]

INSTALL = "apt-get install -y redis-server"
RESP_TIMEOUT = 10.0
READY_PROBE_TIMEOUT = 0.5

RespValue = str | int | bytes | list["RespValue"] | None


class RedisError(RuntimeError):
    """An error reply from Redis."""


class RedisServer(LocalServer):
    """Redis on a free loopback port. ``password=None`` (the default) means no AUTH."""

    kind = "redis"
    scheme = "redis"
    install_hint = INSTALL
    binary: str

    def __init__(
        self, *, port: int | None = None, password: str | None = None, db: int = 0, **kwargs: Any
    ) -> None:
        # Unlike the SQL servers Redis defaults to no password: that is how most apps run it.
        super().__init__(port=port, password=password or "", database=str(db), **kwargs)

    def _locate_binaries(self) -> None:
        self.binary = find_binary(["redis-server"], INSTALL)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        # Redis has no separate superuser here: the admin is the same (default) user, db 0.
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _initialize(self) -> None:
        assert self.base_dir is not None
        settings: dict[str, str] = {
            "port": str(self.port),
            "bind": HOST,
            "dir": str(self.base_dir),
            "save": '""',
            "appendonly": "no",
            "daemonize": "no",
            "protected-mode": "no",
            "logfile": '""',
        }
        if self._major() >= 7:
            # Off by default since Redis 7; without it DEBUG SLEEP (a frozen-server stand-in
            # at the protocol level) is refused.
            settings["enable-debug-command"] = "yes"
        if self.password:
            settings["requirepass"] = self.password
        settings.update(self.config)
        lines = [f"{key} {value}" for key, value in settings.items()]
        (self.base_dir / "redis.conf").write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        assert self.base_dir is not None
        return [self.binary, str(self.base_dir / "redis.conf")]

    def _is_ready(self) -> bool:
        try:
            # Short timeout: a port that accepts but never answers is someone else's.
            return self.command("PING", timeout=READY_PROBE_TIMEOUT) == "PONG"
        except (OSError, RedisError):
            return False

    def command(self, *args: str | int, timeout: float = RESP_TIMEOUT) -> RespValue:
        """Send one command (AUTH first when there is a password) and return its reply."""
        pre: list[Sequence[str | int]] = [("AUTH", self.password)] if self.password else []
        return resp_command(self.host, self.port, [*pre, args], timeout=timeout)[-1]

    def _before_restart(self) -> None:
        # No save points are configured (tests never wait on disk), so a clean restart keeps
        # the data only through one explicit SAVE; dump.rdb in the temp dir is loaded on start.
        self.command("SAVE")

    def _kill_sessions(self, application_name: str | None) -> int:
        if application_name is None:
            reply = self.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            return int(reply) if isinstance(reply, int) else 0
        # CLIENT KILL has no NAME filter: list, match the name, kill by ID.
        listing = self.command("CLIENT", "LIST", "TYPE", "normal")
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        ids = [
            fields["id"]
            for fields in (
                dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                for line in text.splitlines()
            )
            if fields.get("name") == application_name
        ]
        killed = 0
        for client_id in ids:
            reply = self.command("CLIENT", "KILL", "ID", client_id)
            killed += int(reply) if isinstance(reply, int) else 0
        return killed

    def _major(self) -> int:
        return int(self.version.split(".")[0])

    def _read_version(self) -> str:
        return binary_version(self.binary, r"v=(\d+(?:\.\d+)+)")


def resp_command(
    host: str, port: int, commands: Sequence[Sequence[str | int]], timeout: float = RESP_TIMEOUT
) -> list[RespValue]:
    """Send ``commands`` on one fresh connection; return their replies. Raises on an error reply.

    A few lines of RESP instead of redis-py, so the harness needs no driver.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        payload = b"".join(_encode(cmd) for cmd in commands)
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return [_read_reply(reader) for _ in commands]


def _encode(args: Sequence[str | int]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: BinaryIO) -> RespValue:
    line = reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return str(rest.decode())
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return reader.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise RedisError(f"unexpected reply {line!r}")
