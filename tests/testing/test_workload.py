"""stream_during: records successes and errors around a fault, and always joins its threads."""

from __future__ import annotations

import threading
import time

from poolguard.testing import stream_during


def test_records_errors_during_the_fault_and_successes_around_it() -> None:
    down = threading.Event()

    def operation() -> None:
        if down.is_set():
            raise ConnectionError("server down")

    def fault() -> None:
        down.set()
        time.sleep(0.2)
        down.clear()

    before = threading.active_count()
    result = stream_during(fault, operation, threads=3, warmup=0.1, cooldown=0.1)
    assert result.errors
    assert all(isinstance(e, ConnectionError) for e in result.errors)
    assert result.spans_fault()
    assert result.fault_started < result.fault_ended
    assert threading.active_count() == before  # every worker joined


def test_a_quiet_fault_leaves_no_error() -> None:
    result = stream_during(lambda: time.sleep(0.05), lambda: None, warmup=0.05, cooldown=0.05)
    assert result.errors == []
    assert result.spans_fault()
