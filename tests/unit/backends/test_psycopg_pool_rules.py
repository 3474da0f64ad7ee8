"""PoolRules.checkout (the native pool's checkout rules) without a server: the one-test fast path
for a quiet connection must decide exactly as the full rules do."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest

from poolguard.config.settings import Settings
from poolguard.core.disposition import Classification, Disposition
from poolguard.core.retry import Guard
from poolguard.integrations.psycopg_pool._rules import VALIDATE_TIMEOUT, Evicted, PoolRules


def rules(**settings: Any) -> PoolRules:
    s = Settings(url="postgresql://u@localhost/db", **settings)
    guard = Guard("db", "sql", lambda _e: Classification(Disposition.FAIL, "x"))
    return PoolRules(settings=s, guard=guard, pgbouncer=False, redacted_url="postgresql://db")


def conn(now: float, *, idle: float | None, expires_in: float, created_ago: float = 100.0) -> Any:
    return SimpleNamespace(
        _pg_returned=None if idle is None else now - idle,
        _pg_created=now - created_ago,
        _pg_expires=now + expires_in,
        pgconn=SimpleNamespace(finish=lambda: None),
    )


def reference(r: PoolRules, c: Any, now: float) -> object:
    """The rules as written out in full (the code before the fast path)."""
    s = r.settings
    suspect = c._pg_created < r.suspect_before
    if c._pg_returned is None and not suspect:
        return None
    idle = 0.0 if c._pg_returned is None else now - c._pg_returned
    if c._pg_expires <= now:
        return "lifetime"
    if s.max_idle and idle >= s.max_idle:
        return "idle"
    if not suspect and (s.validate_idle is None or idle < s.validate_idle):
        return None
    return VALIDATE_TIMEOUT


def outcome(r: PoolRules, c: Any) -> object:
    try:
        return r.checkout(c)
    except Evicted as exc:
        return str(exc)


@pytest.mark.parametrize(
    ("max_idle", "validate_idle"),
    [(None, None), (None, 1.0), (5.0, None), (5.0, 1.0), (1.0, 5.0), (0, 0.0), (5.0, 0.0)],
)
def test_checkout_decides_like_the_full_rules(
    max_idle: float | None, validate_idle: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1000.0
    monkeypatch.setattr(time, "monotonic", lambda: now)
    r = rules(max_idle=max_idle, validate_idle=validate_idle)
    for idle, expires_in, suspect in itertools.product(
        (None, 0.0, 0.5, 1.0, 3.0, 5.0, 9.0), (-1.0, 0.0, 0.5, 60.0), (False, True)
    ):
        r.suspect_before = now - 50.0 if suspect else 0.0
        c = conn(now, idle=idle, expires_in=expires_in)
        assert outcome(r, c) == reference(r, c, now), (idle, expires_in, suspect)


@pytest.mark.parametrize(
    "error",
    [
        # A SIGKILLed / crashed server: libpq's bare EOF, CONNECTION scope (no 57P01).
        "consuming input failed: server closed the connection unexpectedly",
        "server closed the connection unexpectedly",
    ],
)
def test_any_disconnect_makes_older_connections_suspect(error: str) -> None:
    import psycopg

    r = rules(validate_idle=5.0)
    before = time.monotonic()
    c = conn(before, idle=0.1, expires_in=1e9)
    assert outcome(r, c) is None  # recently used: no ping
    r.observe(psycopg.OperationalError(error))
    assert r.suspect_before >= before
    assert outcome(r, c) == VALIDATE_TIMEOUT  # what killed one may have killed it too
    r.observe(psycopg.errors.UniqueViolation("duplicate key"))  # not a disconnect
    assert r.guard.stats.count("disconnects") == 1


def test_a_backstop_cut_marks_no_sibling_suspect() -> None:
    """poolguard's own cut (a frozen server, a slow query) is counted but marks nothing: each
    sibling meets the freeze under its own bound, without a ping first."""
    import psycopg

    r = rules(validate_idle=None)
    cut = psycopg.OperationalError("no reply within 1.00s: connection cut")
    cut.poolguard_cut = True  # type: ignore[attr-defined]
    r.observe(cut)
    r.observe(psycopg.OperationalError("server closed the connection unexpectedly"), mark=False)
    assert r.suspect_before == 0.0
    assert r.guard.stats.count("disconnects") == 2
