"""FaultProxy.retarget: new links go to the new upstream, open ones stay with the old one."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from poolguard.testing.proxy import FaultProxy

pytestmark = pytest.mark.chaos


def _tagged(tag: bytes) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:  # answers each read with its own tag
            try:
                while self.request.recv(64):
                    self.request.sendall(tag)
            except OSError:
                pass

    return Handler


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


@pytest.fixture
def servers() -> Iterator[list[tuple[str, int]]]:
    started = [_Server(("127.0.0.1", 0), _tagged(tag)) for tag in (b"old", b"new")]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [(s.server_address[0], s.server_address[1]) for s in started]
    for server in started:
        server.shutdown()
        server.server_close()


def _ask(sock: socket.socket) -> bytes:
    sock.sendall(b"?")
    return sock.recv(16)


def test_retarget_moves_new_links_only(servers: list[tuple[str, int]]) -> None:
    (old_host, old_port), (new_host, new_port) = servers
    with FaultProxy(old_host, old_port) as proxy:
        before = socket.create_connection((proxy.host, proxy.port), timeout=5)
        assert _ask(before) == b"old"
        proxy.retarget(new_host, new_port)
        after = socket.create_connection((proxy.host, proxy.port), timeout=5)
        assert _ask(after) == b"new"
        assert _ask(before) == b"old"  # an open link stays where it was, as after a DNS move
        assert (proxy.upstream_host, proxy.upstream_port) == (new_host, new_port)
        before.close()
        after.close()
