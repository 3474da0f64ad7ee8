"""Finding server programs and free loopback ports: what the launchers ask of the machine.

:func:`find_binary` (or :class:`ServerUnavailable`, carrying the install command),
:func:`free_port`, :func:`tcp_accepts` / :func:`unix_accepts` (readiness) and
:func:`binary_version`. Used by ``_base.py`` and each launcher, and by ``../proxy.py``.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "HOST",
    "ServerUnavailable",
    "binary_version",
    "find_binary",
    "free_port",
    "tcp_accepts",
    "unix_accepts",
]

HOST = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """The server software is not installed here; the message says how to install it."""

    def __init__(self, what: str, install: str) -> None:
        super().__init__(f"{what} not found; install it with: {install}")
        self.install = install


def find_binary(names: Sequence[str], install: str, *, dirs: Sequence[str | Path] = ()) -> str:
    """The first of ``names`` found in ``dirs`` then on PATH (plus the sbin dirs), else raise."""
    for directory in dirs:
        for name in names:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    # Daemons live in sbin, which a normal user's PATH often lacks.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    raise ServerUnavailable(" / ".join(names), install)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port *below* the kernel's ephemeral range.

    A port from the ephemeral range can be taken as the local port of some outgoing connection
    while a server is down for a :meth:`LocalServer.restart`, and the restart then fails to bind.
    """
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(15000, max(low, 15001))
        if _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tcp_accepts(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.cache
def binary_version(binary: str, pattern: str = r"(\d+(?:\.\d+)+)") -> str:
    """The version a server binary prints for ``--version``, picked out by ``pattern``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(pattern, out)
    return match.group(1) if match else out.strip()


def unix_accepts(path: str | Path, timeout: float = 0.2) -> bool:
    """Whether a server listens on the Unix socket ``path``.

    Readiness checks prefer the server's own socket in its temp dir to its TCP port: a TCP port
    that accepts may belong to another process that took it first.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
