"""A TCP relay that delays server -> client data by a fixed latency counted from its arrival.

``run_all.py`` puts it in front of a variant to count the round trips a caller *waits* for:
with ``latency`` L, a request that waits for k replies takes k * L longer than without. Unlike
``FaultProxy.latency`` (each chunk waits its delay after the previous chunk left), every chunk
here is due L after it arrived, so a reply nobody waited for (a reset's, read at the next
checkout) does not push the next reply back: only waiting costs L.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


class LatencyRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency = 0.0  # seconds; set from any thread, read per chunk
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> LatencyRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, original_url: str) -> str:
        """``original_url`` pointed at the relay (credentials kept)."""
        parts = urlsplit(original_url)
        userinfo = parts.netloc.rpartition("@")[0]
        where = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{where}" if userinfo else where))

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, delayed=False)),
            asyncio.create_task(self._pipe(up_reader, writer, delayed=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        """Read as data arrives (stamping it); a second task writes each chunk when it is due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def forward() -> None:
            while (item := await queue.get()) is not None:
                arrived, data = item
                due = arrived + (self.latency if delayed else 0.0)
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()

        writer_task = asyncio.create_task(forward())
        try:
            while data := await reader.read(CHUNK):
                queue.put_nowait((loop.time(), data))
            queue.put_nowait(None)
            await writer_task
        except (OSError, asyncio.CancelledError):
            writer_task.cancel()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
