"""FaultProxy and DeafListener: each toxic proven on a real echo server and on PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from poolguard.testing.proxy import DeafListener, FaultProxy

pytestmark = pytest.mark.chaos

SHORT = 0.3  # how long "nothing arrives" is watched
Factory = Callable[..., FaultProxy]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:  # the proxy reset us: that is what the test wanted
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()


def dial(proxy: FaultProxy | DeafListener, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def dial_and_read(proxy: FaultProxy) -> bytes:
    # A reset that races the handshake shows up in connect() already, else in the first recv().
    with dial(proxy) as sock:
        return sock.recv(16)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "link closed"
        received += chunk
    assert received == payload
    return time.monotonic() - started


def nothing_arrives(sock: socket.socket, within: float = SHORT) -> bool:
    sock.settimeout(within)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5.0)
    return False


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


# --- echo server --------------------------------------------------------------------------------
def test_relays_and_counts_links(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    assert proxy.links == 0
    with dial(proxy) as a, dial(proxy) as b:
        roundtrip(a)
        roundtrip(b, b"x" * 200_000)
        assert proxy.links == 2
    wait_for(lambda: proxy.links == 0)


def test_flights_count_each_client_send_after_a_reply_per_link(
    fault_proxy: Factory, echo: tuple[str, int]
) -> None:
    proxy = fault_proxy(*echo)
    with dial(proxy) as a, dial(proxy) as b:
        assert proxy.flights == 0  # a TCP connect is not a flight
        for _ in range(3):
            roundtrip(a)
        roundtrip(b)
        roundtrip(a)  # a's last direction is its own: b's reply in between changes nothing
    assert proxy.flights == 5


def test_latency_applies_to_existing_links_per_direction(
    fault_proxy: Factory, echo: tuple[str, int]
) -> None:
    proxy = fault_proxy(*echo)
    with dial(proxy) as sock:
        roundtrip(sock)
        proxy.latency(0.2, direction="upstream")
        assert roundtrip(sock) >= 0.2
        proxy.latency(0.2)  # both ways now: each chunk waits once per direction
        assert roundtrip(sock) >= 0.4
        proxy.clear()
        assert roundtrip(sock) < 0.2


def test_latency_jitter_stays_in_range(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    proxy.latency(0.1, jitter=0.05, direction="downstream")
    with dial(proxy) as sock:
        times = [roundtrip(sock) for _ in range(5)]
    assert min(times) >= 0.05


def test_blackhole_holds_data_and_never_closes(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    with dial(proxy) as old:
        roundtrip(old)
        proxy.blackhole()
        old.sendall(b"held")
        assert nothing_arrives(old)
        with dial(proxy) as new:  # accepted, then silence
            new.sendall(b"x")
            assert nothing_arrives(new)
        proxy.clear()
        old.settimeout(5)
        assert old.recv(16) == b"held"  # delivered late, like TCP after a blackhole ends


def test_blackhole_one_direction(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    proxy.blackhole(direction="downstream")
    with dial(proxy) as sock:
        sock.sendall(b"up")
        assert nothing_arrives(sock)
        proxy.clear()
        sock.settimeout(5)
        assert sock.recv(16) == b"up"


def test_reset_sends_rst_now_and_on_accept(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    with dial(proxy) as sock:
        roundtrip(sock)
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(16)
    with pytest.raises(ConnectionResetError):
        dial_and_read(proxy)  # accepted, then reset at once
    proxy.clear()
    with dial(proxy) as sock:
        roundtrip(sock)


def test_down_refuses_and_cuts_then_up_on_same_port(
    fault_proxy: Factory, echo: tuple[str, int]
) -> None:
    proxy = fault_proxy(*echo)
    port = proxy.port
    with dial(proxy) as sock:
        roundtrip(sock)
        proxy.down()
        sock.settimeout(5)
        assert sock.recv(16) == b""  # cut
    with pytest.raises(ConnectionRefusedError):
        dial(proxy)
    assert proxy.links == 0
    proxy.up()
    assert proxy.port == port
    with dial(proxy) as sock:
        roundtrip(sock)


def test_close_after_counts_bytes_from_when_it_is_set(
    fault_proxy: Factory, echo: tuple[str, int]
) -> None:
    proxy = fault_proxy(*echo)
    with dial(proxy) as sock:
        roundtrip(sock, b"a" * 100)  # not counted: sent before the toxic
        proxy.close_after(10, direction="downstream")
        sock.sendall(b"0123456789ABCDEF")  # the echo sends 16 back, 10 get through
        received = b""
        while chunk := sock.recv(64):
            received += chunk
        assert received == b"0123456789"  # exactly 10 bytes, then EOF
    with dial(proxy) as sock:  # the upstream direction: the request itself is cut
        proxy.close_after(4, direction="upstream")
        sock.sendall(b"0123456789")
        assert sock.recv(64) == b""


def test_bandwidth_paces_a_large_transfer(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    payload = b"z" * 100_000
    proxy.bandwidth(200_000, direction="downstream")
    with dial(proxy) as sock:
        assert roundtrip(sock, payload) >= 0.45  # 100 kB at 200 kB/s is 0.5 s
    with pytest.raises(ValueError, match="positive"):
        proxy.bandwidth(0)


def test_url_rewrites_only_host_and_port() -> None:
    proxy = FaultProxy("db.example", 5432, listen_port=25001)
    assert (
        proxy.url("postgresql://app:p%40ss@db.example:5432/app?sslmode=disable")
        == "postgresql://app:p%40ss@127.0.0.1:25001/app?sslmode=disable"
    )
    assert proxy.url("redis://localhost:6379/0") == "redis://127.0.0.1:25001/0"
    assert proxy.url("redis://:pw@localhost/2") == "redis://:pw@127.0.0.1:25001/2"


def test_unreachable_upstream_resets_the_client(fault_proxy: Factory) -> None:
    from poolguard.testing.servers import free_port

    proxy = fault_proxy("127.0.0.1", free_port())  # nothing listens there
    with pytest.raises(ConnectionResetError):
        dial_and_read(proxy)


def test_stop_is_idempotent_and_ends_the_thread(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(*echo).start()
    link = dial(proxy)
    roundtrip(link)
    proxy.stop()
    proxy.stop()
    link.settimeout(5)
    assert link.recv(1) == b""
    link.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy:")]
    with pytest.raises(RuntimeError, match="not started"):
        proxy.latency(1)


async def test_usable_from_async_code(fault_proxy: Factory, echo: tuple[str, int]) -> None:
    proxy = fault_proxy(*echo)
    proxy.latency(0.1, direction="downstream")
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    started = time.monotonic()
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
    assert time.monotonic() - started >= 0.1
    proxy.blackhole()
    writer.write(b"lost")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), SHORT)
    writer.close()


# --- DeafListener ---------------------------------------------------------------------------------
def test_deaf_listener_connect_hangs_until_the_client_timeout() -> None:
    with DeafListener() as deaf:
        sock = socket.socket()
        sock.settimeout(1.0)
        started = time.monotonic()
        with pytest.raises(socket.timeout):  # not refused, not accepted: hanging
            sock.connect((deaf.host, deaf.port))
        assert time.monotonic() - started >= 0.9
        sock.close()
    refused = socket.socket()
    with pytest.raises(ConnectionRefusedError):  # closed: plain refusal again
        refused.connect((deaf.host, deaf.port))
    refused.close()


# --- through PostgreSQL ---------------------------------------------------------------------------
def _pg(url: str, **kw: Any) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=kw.pop("connect_timeout", 5), **kw)


@pytest.mark.postgres
def test_postgres_through_the_proxy(fault_proxy: Factory, postgres_server: Any) -> None:
    import psycopg

    proxy = fault_proxy(postgres_server)
    url = proxy.url(postgres_server.url)
    conn = _pg(url)
    assert conn.execute("SELECT 1").fetchone() == (1,)

    proxy.latency(0.1)  # latency adds to every round trip (one each way)
    started = time.monotonic()
    conn.execute("SELECT 1").fetchone()
    assert time.monotonic() - started >= 0.2
    proxy.clear()

    proxy.bandwidth(500_000, direction="downstream")  # ~400 kB result at 500 kB/s
    started = time.monotonic()
    conn.execute("SELECT repeat('x', 400000)").fetchone()
    assert time.monotonic() - started >= 0.7
    proxy.clear()

    proxy.close_after(50_000, direction="downstream")  # cut mid-result
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT repeat('x', 400000)").fetchone()
    proxy.clear()

    conn = _pg(url)
    proxy.reset()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        _pg(url)
    proxy.clear()

    conn = _pg(url)
    proxy.down()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="refused"):
        _pg(url)
    proxy.up()
    assert _pg(url).execute("SELECT 2").fetchone() == (2,)


@pytest.mark.postgres
def test_postgres_flights_are_round_trips(fault_proxy: Factory, postgres_server: Any) -> None:
    import psycopg

    proxy = fault_proxy(postgres_server)
    url = proxy.url(postgres_server.url)
    conn = _pg(url)
    before = proxy.flights
    for _ in range(4):
        conn.execute("SELECT 1").fetchone()
    assert proxy.flights - before == 4  # autocommit: one round trip per statement
    with psycopg.connect(url, connect_timeout=5) as tx:
        before = proxy.flights
        tx.execute("SELECT 1").fetchone()
        tx.commit()
        assert proxy.flights - before == 3  # BEGIN, SELECT, COMMIT
        before = proxy.flights
        with tx.pipeline():
            tx.execute("SELECT 1")
            tx.execute("SELECT 2")
        tx.commit()
        assert proxy.flights - before < 4  # pipelined: fewer than BEGIN, 2 x SELECT, COMMIT


@pytest.mark.postgres
def test_postgres_blackhole_hangs_until_the_client_gives_up(
    fault_proxy: Factory, postgres_server: Any
) -> None:
    import psycopg

    proxy = fault_proxy(postgres_server)
    url = proxy.url(postgres_server.url)
    conn = _pg(url)
    proxy.blackhole()
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(conn.execute("SELECT 3").fetchone()), daemon=True
    )
    worker.start()
    worker.join(SHORT)
    assert worker.is_alive()  # psycopg sync has no read timeout: it would hang forever
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):  # a new connection: libpq's connect_timeout
        _pg(url, connect_timeout=2)
    assert time.monotonic() - started >= 1.9
    proxy.clear()
    worker.join(5)
    assert result == [(3,)]


@pytest.mark.postgres
def test_postgres_connect_to_deaf_listener_times_out(postgres_server: Any) -> None:
    import psycopg

    with DeafListener() as deaf:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            _pg(deaf.url(postgres_server.url), connect_timeout=2)
        assert time.monotonic() - started >= 1.9
