"""A fault-injecting TCP proxy (toxiproxy semantics) and a listener that never answers.

:class:`FaultProxy` relays each client connection (a *link*) to its own upstream connection.
Faults ("toxics") are state on the proxy, read by every link for every chunk, so they act on
existing links as soon as they are set, and on new ones. Directions follow toxiproxy:
``upstream`` is client -> server, ``downstream`` is server -> client, ``both`` is both.

:attr:`FaultProxy.flights` counts round trips on the wire, deterministically (benchmarks and tests
of "fewer round trips" read it instead of timing anything).

The proxy runs its own event loop in a daemon thread, so the same object serves sync tests and
async tests (whose loop is another one); every public method is thread-safe and returns once the
change is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from poolguard.testing.servers._system import free_port

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["DeafListener", "Direction", "FaultProxy"]

Direction = Literal["both", "upstream", "downstream"]
_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "both": ("upstream", "downstream"),
    "upstream": ("upstream",),
    "downstream": ("downstream",),
}
CHUNK = 64 * 1024
UPSTREAM_CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
# A bandwidth-limited write is paced in slices of about this long, so the rate is smooth.
BANDWIDTH_SLICE = 0.05

_T = TypeVar("_T")
_ids = itertools.count(1)


@dataclass(frozen=True)
class _Toxics:
    """The faults on one direction. Immutable: a change installs a new object."""

    latency: float = 0.0
    jitter: float = 0.0
    blackhole: bool = False
    bandwidth: float | None = None
    close_after: int | None = None
    # Bytes are counted from when a close_after toxic is set, per link: a fresh id resets them.
    close_after_id: int = 0

    def delay(self, rng: random.Random) -> float:
        if self.latency <= 0 and self.jitter <= 0:
            return 0.0
        return max(0.0, self.latency + rng.uniform(-self.jitter, self.jitter))


@dataclass(eq=False)  # identity: links live in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    counted: dict[tuple[str, int], int] = field(default_factory=dict)
    # The direction of the last data read on this link: a change to "upstream" starts a flight.
    last_direction: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False
    # idle_cut(): loop time of the last data either way, and whether the path forgot the link.
    last_active: float = 0.0
    dead: bool = False

    def close(self, *, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            _close_writer(writer, rst=rst)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


def _close_writer(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout turns close() into a RST.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` with switchable faults.

    ``listen_port=0`` picks a free port once (below the ephemeral range, so no outgoing
    connection takes it while the proxy is down); :meth:`up` after :meth:`down` listens on it again.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = listen_host
        self.port = listen_port or free_port()
        self._rng = random.Random(seed)
        self._toxics = {"upstream": _Toxics(), "downstream": _Toxics()}
        self._reset = False
        self._links: set[_Link] = set()
        self._flights = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._changed: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._idle_cut: tuple[float, bool] | None = None
        self._idle_watch: asyncio.Task[None] | None = None
        self._idle_cuts = 0

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the proxy's loop thread and listen; returns self."""
        with self._lock:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=_run_loop, args=(loop, ready), name=f"FaultProxy:{self.port}", daemon=True
            )
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        try:
            self._call(self._init_async())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every link, and end the loop thread; idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop_async(), loop).result(CALL_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- where it is -----------------------------------------------------------------------
    @property
    def links(self) -> int:
        """How many client connections are being relayed now."""
        return len(self._links)

    @property
    def is_up(self) -> bool:
        return self._server is not None

    @property
    def flights(self) -> int:
        """Client -> server *flights* so far, over every link since start.

        A flight is data the client sends after the link opened or after data from the server:
        consecutive chunks in the same direction are one flight. When the client waits for each
        reply before sending again, flights are exactly its round trips (a TCP connect is not
        one). Messages sent together (pipelined) are one flight; a message sent without waiting
        for the previous reply counts one flight if the server answered in between.
        """
        return self._flights

    def url(self, original_url: str) -> str:
        """``original_url`` with its host:port replaced by the proxy's (credentials kept)."""
        return _retarget(original_url, self.host, self.port)

    # --- toxics ----------------------------------------------------------------------------
    def latency(self, seconds: float, jitter: float = 0.0, direction: Direction = "both") -> None:
        """Delay each chunk by ``seconds`` ± ``jitter``; under "both" a round trip pays it twice."""
        self._set(direction, latency=seconds, jitter=jitter)

    def blackhole(self, direction: Direction = "both") -> None:
        """Forward nothing and never close; held data flows again after :meth:`clear`."""
        self._set(direction, blackhole=True)

    def bandwidth(self, bytes_per_second: float, direction: Direction = "both") -> None:
        """Limit each link's throughput to ``bytes_per_second``."""
        if bytes_per_second <= 0:
            raise ValueError("bandwidth must be positive; use blackhole() to stop all data")
        self._set(direction, bandwidth=float(bytes_per_second))

    def close_after(self, nbytes: int, direction: Direction = "both") -> None:
        """Close each link once ``nbytes`` more bytes went through it in ``direction``."""
        self._set(direction, close_after=int(nbytes), close_after_id=next(_ids))

    def idle_cut(self, seconds: float, *, rst: bool = False) -> None:
        """Forget every link idle (no data either way) for ``seconds``, as a NAT or a stateful
        firewall does: from then on its data is silently dropped both ways and it is never
        closed (``rst=True``: it is reset at once instead). Links kept busy are not cut."""
        if seconds <= 0:
            raise ValueError("idle_cut needs a positive number of seconds")
        self._call(self._idle_cut_async((float(seconds), rst)))

    @property
    def idle_cuts(self) -> int:
        """Links cut by :meth:`idle_cut` so far."""
        return self._idle_cuts

    def reset(self) -> None:
        """RST every link now, and every new connection as soon as it is accepted (until clear)."""
        self._call(self._reset_async())

    def down(self) -> None:
        """Stop listening (connections are refused) and cut every link."""
        self._call(self._down_async())

    def up(self) -> None:
        """Listen again, on the same port."""
        self._call(self._listen())

    def retarget(self, host: str, port: int) -> None:
        """Send *new* connections to ``host:port`` (a VIP or DNS name moved to a new primary);
        links already open stay with the old server, as TCP connections do when DNS changes."""

        async def swap() -> None:  # on the proxy's loop, so no accept sees half of it
            self.upstream_host, self.upstream_port = host, port

        if self._loop is None:
            self.upstream_host, self.upstream_port = host, port
        else:
            self._call(swap())

    def clear(self) -> None:
        """Remove every toxic (latency, blackhole, bandwidth, close_after, reset); not down()."""
        self._call(self._clear_async())

    # --- loop side -------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    def _set(self, direction: Direction, **changes: Any) -> None:
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'both', 'upstream' or 'downstream': {direction!r}")

        async def apply() -> None:
            for name in _DIRECTIONS[direction]:
                self._toxics[name] = replace(self._toxics[name], **changes)
            self._notify()

        self._call(apply())

    def _notify(self) -> None:
        """Wake the pumps waiting for a toxic to change (blackhole lifted)."""
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _init_async(self) -> None:
        self._changed = asyncio.Event()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # reuse_address (asyncio's default on Unix) lets up() bind the port down() released.
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _down_async(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.close()

    async def _reset_async(self) -> None:
        self._reset = True
        for link in list(self._links):
            link.close(rst=True)

    async def _idle_cut_async(self, cut: tuple[float, bool] | None) -> None:
        self._idle_cut = cut
        if cut is not None and self._idle_watch is None:
            self._idle_watch = asyncio.get_running_loop().create_task(self._watch_idle())

    async def _watch_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while self._idle_cut is not None:
            seconds, rst = self._idle_cut
            now = loop.time()
            for link in list(self._links):
                if not link.dead and now - link.last_active >= seconds:
                    self._idle_cuts += 1
                    link.dead = True
                    if rst:
                        link.close(rst=True)
            await asyncio.sleep(min(0.05, seconds / 10))
        self._idle_watch = None

    async def _clear_async(self) -> None:
        self._reset = False
        self._idle_cut = None
        self._toxics = {"upstream": _Toxics(), "downstream": _Toxics()}
        self._notify()

    async def _stop_async(self) -> None:
        self._idle_cut = None
        await self._down_async()
        tasks = [task for link in self._links for task in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._reset or self._server is None:
            _close_writer(writer, rst=self._reset)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                UPSTREAM_CONNECT_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError):
            # As a real network path to a dead server would: the client sees a reset.
            _close_writer(writer, rst=True)
            return
        link = _Link(client=writer, server=up_writer, last_active=asyncio.get_running_loop().time())
        self._links.add(link)
        loop = asyncio.get_running_loop()
        link.tasks = [
            loop.create_task(self._pump(link, "upstream", reader, up_writer)),
            loop.create_task(self._pump(link, "downstream", up_reader, writer)),
        ]
        # reset() or down() ran while we were connecting upstream.
        if self._reset or self._server is None:
            link.close(rst=self._reset)

    async def _pump(
        self,
        link: _Link,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while not link.closed:
                await self._while_blackholed(direction)
                data = await reader.read(CHUNK)
                if not data:
                    break
                if link.dead:
                    continue  # idle_cut(): the path forgot this link, its data goes nowhere
                link.last_active = asyncio.get_running_loop().time()
                self._count_flight(link, direction)
                # Set while we waited in read(): hold what arrived, as a blackholed path would.
                await self._while_blackholed(direction)
                if not await self._forward(link, direction, data, writer):
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        finally:
            self._links.discard(link)
            link.close()

    def _count_flight(self, link: _Link, direction: str) -> None:
        # Both pumps of a link run on this loop, so the order of reads is the order on the wire
        # for a client that waits for replies: the reply is read here before it reaches it.
        if direction != link.last_direction:
            link.last_direction = direction
            if direction == "upstream":
                self._flights += 1

    async def _while_blackholed(self, direction: str) -> None:
        while self._toxics[direction].blackhole:
            assert self._changed is not None
            await self._changed.wait()

    async def _forward(
        self, link: _Link, direction: str, data: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Send ``data`` under the direction's toxics; False once the link must close."""
        toxics = self._toxics[direction]
        delay = toxics.delay(self._rng)
        if delay:
            await asyncio.sleep(delay)
        keep_open = True
        if toxics.close_after is not None:
            key = (direction, toxics.close_after_id)
            budget = toxics.close_after - link.counted.get(key, 0)
            if len(data) >= budget:
                data, keep_open = data[: max(budget, 0)], False
            link.counted[key] = link.counted.get(key, 0) + len(data)
        if toxics.bandwidth is None:
            writer.write(data)
            await writer.drain()
        else:
            await _paced_write(writer, data, toxics.bandwidth)
        return keep_open

    def __repr__(self) -> str:
        target = f"{self.upstream_host}:{self.upstream_port}"
        return f"<FaultProxy {self.host}:{self.port} -> {target} links={self.links}>"


async def _paced_write(writer: asyncio.StreamWriter, data: bytes, rate: float) -> None:
    step = max(1, int(rate * BANDWIDTH_SLICE))
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(len(piece) / rate)


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()
    # Let cancelled pumps finish so no "Task was destroyed but it is pending" at exit.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _retarget(original_url: str, host: str, port: int) -> str:
    parts = urlsplit(original_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class DeafListener:
    """A listening port where connect() hangs: the accept queue is full, so SYNs are dropped.

    ``listen(0)`` leaves room for one unaccepted connection on Linux; one filler connection takes
    it, and every later SYN is dropped by the kernel (a *listen overflow*), so the client's
    connect() blocks in SYN retransmits until its own connect timeout, exactly like a host that
    does not answer. Nothing here ever accepts.
    """

    FILL_TIMEOUT = 0.25
    MAX_FILLERS = 8

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(0)
        self.host, self.port = self._sock.getsockname()[:2]
        self._fillers: list[socket.socket] = []
        self._fill()

    def _fill(self) -> None:
        for _ in range(self.MAX_FILLERS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(self.FILL_TIMEOUT)
            try:
                sock.connect((self.host, self.port))
            except OSError:  # timed out: the queue is full, SYNs are being dropped now
                sock.close()
                return
            self._fillers.append(sock)
        self.close()
        raise RuntimeError("DeafListener: the accept queue never filled up")

    def url(self, original_url: str) -> str:
        """``original_url`` pointed at this listener (credentials kept)."""
        return _retarget(original_url, self.host, self.port)

    def close(self) -> None:
        for sock in [*self._fillers, self._sock]:
            sock.close()
        self._fillers.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
