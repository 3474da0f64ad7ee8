"""MyRules (the native aiomysql pool's decisions) without a server: checkout (EOF, lifetime,
idle, validation window, suspect), the unit's retryable errnos, acquire's reconnect delays."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pymysql
import pytest

import poolguard
from poolguard.config.settings import Settings
from poolguard.core.retry import Guard
from poolguard.integrations.aiomysql_pool._rules import (
    VALIDATE_TIMEOUT,
    Evicted,
    MyRules,
    classify,
)


def rules(**settings: Any) -> MyRules:
    s = Settings(url="mysql://u@localhost/db", **settings)
    return MyRules(settings=s, guard=Guard("db", "mysql", classify), redacted_url="mysql://db")


class _Reader:
    def __init__(self, eof: bool = False) -> None:
        self.eof = eof

    def at_eof(self) -> bool:
        return self.eof

    def exception(self) -> None:
        return None


def conn(
    *, idle: float | None, expires_in: float = 1e9, eof: bool = False, age: float = 100.0
) -> Any:
    now = time.monotonic()
    c = SimpleNamespace(
        _my_returned=None if idle is None else now - idle,
        _my_created=now - age,
        _my_expires=now + expires_in,
        _reader=_Reader(eof),
        closed=False,
    )
    c.close = lambda: setattr(c, "closed", True)
    return c


def outcome(r: MyRules, c: Any) -> object:
    try:
        return r.checkout(c)
    except Evicted as exc:
        return str(exc)


def test_fresh_and_recently_used_connections_are_not_pinged() -> None:
    r = rules(validate_idle=1.0)
    assert outcome(r, conn(idle=None)) is None
    assert outcome(r, conn(idle=0.5)) is None
    assert outcome(r, conn(idle=2.0)) == VALIDATE_TIMEOUT
    assert r.guard.stats.count("evictions.disconnect") == 0


def test_validate_idle_off_and_zero() -> None:
    assert outcome(rules(validate_idle=None), conn(idle=100.0)) is None
    assert outcome(rules(validate_idle=0), conn(idle=0.0)) == VALIDATE_TIMEOUT


def test_eof_lifetime_and_idle_evict_and_close() -> None:
    r = rules(max_idle=10.0)
    for c, reason in (
        (conn(idle=0.1, eof=True), "disconnect"),
        (conn(idle=0.1, expires_in=-1), "lifetime"),
        (conn(idle=11.0), "idle"),
    ):
        assert outcome(r, c) == reason
        assert c.closed
    assert r.guard.stats.count("disconnects") == 1  # the server-closed one


def test_suspect_connections_are_pinged_even_when_fresh() -> None:
    r = rules(validate_idle=5.0)
    c = conn(idle=None, age=1.0)
    r.suspect_before = time.monotonic()
    assert outcome(r, c) == VALIDATE_TIMEOUT
    assert outcome(r, conn(idle=None, age=-1.0)) is None  # created after the failure


def test_ping_is_bounded_by_the_deadline() -> None:
    r = rules(validate_idle=0)
    with poolguard.deadline(0.2):
        seconds = outcome(r, conn(idle=1.0))
    assert isinstance(seconds, float)
    assert seconds <= 0.2


def test_lifetime_is_jittered_downwards_only() -> None:
    r = rules(max_lifetime=100.0)
    draws = {r.lifetime() for _ in range(50)}
    assert all(95.0 <= d <= 100.0 for d in draws)
    assert len(draws) > 1
    assert rules(max_lifetime=None).lifetime() == float("inf")


def test_unit_guard_reruns_only_the_chosen_errnos() -> None:
    r = rules()
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found")
    lock_wait = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
    default = r.unit_guard({1213, 1205}, None)
    assert default.classify(deadlock).disposition.value == "retry_transaction"
    assert default.classify(lock_wait).disposition.value == "retry_transaction"
    only_deadlock = r.unit_guard({1213}, 2)
    assert only_deadlock.classify(lock_wait).disposition.value == "fail"
    assert only_deadlock.policy.attempts == 2
    assert r.unit_guard({1213}, 2) is only_deadlock  # cached


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (pymysql.err.OperationalError(2003, "Can't connect (refused)"), True),
        (pymysql.err.OperationalError(1040, "Too many connections"), True),
        (pymysql.err.OperationalError(1045, "Access denied"), False),
        (pymysql.err.OperationalError(2013, "Lost connection"), False),
    ],
)
def test_acquire_reconnects_only_after_connect_failures(error: Exception, retried: bool) -> None:
    r = rules(retry_backoff_initial=0.01, retry_backoff_max=0.01)
    delay = r.reconnect_delay(error, 1, 5.0, time.monotonic())
    assert (delay is not None) is retried


def test_acquire_reconnect_stops_at_the_wait_and_the_open_breaker() -> None:
    r = rules(retry_backoff_initial=0.01, retry_backoff_max=0.01)
    refused = pymysql.err.OperationalError(2003, "Can't connect (refused)")
    assert r.reconnect_delay(refused, 1, 1.0, time.monotonic() - 2.0) is None  # wait spent
    for _ in range(5):
        r.guard.breaker.record_failure()
    assert r.reconnect_delay(refused, 1, 5.0, time.monotonic()) is None


def test_any_disconnect_makes_older_connections_suspect() -> None:
    r = rules(validate_idle=5.0)
    c = conn(idle=0.1)
    assert outcome(r, c) is None  # recently used: no ping
    # A CONNECTION-scope disconnect (PyMySQL refusing to send on a closed connection).
    assert r.observe(pymysql.err.InterfaceError(0, "")) is True
    assert outcome(r, c) == VALIDATE_TIMEOUT  # older connections are pinged next checkout
    assert r.observe(pymysql.err.IntegrityError(1062, "Duplicate entry")) is False
