"""The at-fork hook's own rules (poolguard/integrations/_fork.py), without forking: the real
forks are tests/integration/frameworks/test_fork.py and test_gunicorn.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from poolguard.integrations import _fork


def _guard() -> Any:
    parts = {
        name: SimpleNamespace(_lock=threading.Lock()) for name in ("budget", "breaker", "stats")
    }
    return SimpleNamespace(**parts)


def test_locks_held_at_the_fork_are_replaced() -> None:
    guard = _guard()
    held = [guard.budget._lock, guard.breaker._lock, guard.stats._lock]
    for lock in held:
        lock.acquire()  # as if another thread held them when the process forked
    _fork._fresh_locks(guard)
    for name, old in zip(("budget", "breaker", "stats"), held, strict=True):
        new = getattr(guard, name)._lock
        assert new is not old
        assert new.acquire(blocking=False)


class _Engine:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.disposed: list[bool] = []
        self.pool = SimpleNamespace(_guard_state=SimpleNamespace(guard=_guard()))

    def dispose(self, close: bool = True) -> None:
        if self.fail:
            raise RuntimeError("boom")
        self.disposed.append(close)


def test_every_engine_is_disposed_without_closing_even_if_one_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engines = [_Engine(fail=False), _Engine(fail=True), _Engine(fail=False)]
    monkeypatch.setattr(_fork, "_engines", set(engines))
    monkeypatch.setattr(_fork, "_guards", set())
    monkeypatch.setattr(_fork, "_native_pools", set())
    _fork._after_fork_in_child()
    assert [e.disposed for e in engines if not e.fail] == [[False], [False]]
    assert "after fork failed" in caplog.text


def test_a_native_pool_closed_at_the_fork_is_left_alone() -> None:
    pool = SimpleNamespace(closed=True)
    _fork._refuse_in_child(pool)
    assert not hasattr(pool, "_getconn_unchecked")
