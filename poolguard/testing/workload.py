"""Run a stream of operations from a few threads while a fault happens, and report.

The question every outage test asks — "did callers see errors while the server restarted?" —
written once::

    from poolguard.testing import stream_during

    def read():
        with poolguard.deadline(10), engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    result = stream_during(lambda: server.restart(downtime=1.5), read)
    assert result.errors == []
    assert result.spans_fault()      # reads succeeded both before and after the outage

Bounded: the stream stops ``cooldown`` seconds after the fault returns (the fault itself is the
caller's to bound), and every worker thread is joined.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["StreamResult", "stream_during"]


@dataclass
class StreamResult:
    """What the stream saw: when each operation succeeded, and every error it raised."""

    ok: list[float] = field(default_factory=list)
    """``time.monotonic()`` at each success."""
    errors: list[BaseException] = field(default_factory=list)
    fault_started: float = 0.0
    fault_ended: float = 0.0

    def spans_fault(self) -> bool:
        """Operations succeeded both before the fault started and after it ended."""
        return any(t < self.fault_started for t in self.ok) and any(
            t > self.fault_ended for t in self.ok
        )


def stream_during(
    fault: Callable[[], object],
    operation: Callable[[], object],
    *,
    threads: int = 2,
    warmup: float = 0.3,
    cooldown: float = 0.5,
    pause: float = 0.01,
) -> StreamResult:
    """Call ``operation`` in a loop from ``threads`` threads; ``warmup`` s in, run ``fault``."""
    result = StreamResult()
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            try:
                operation()
            except Exception as exc:
                with lock:
                    result.errors.append(exc)
            else:
                with lock:
                    result.ok.append(time.monotonic())
            time.sleep(pause)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        time.sleep(warmup)
        result.fault_started = time.monotonic()
        fault()
        result.fault_ended = time.monotonic()
        time.sleep(cooldown)
    finally:
        stop.set()
        for t in workers:
            t.join()
    return result
