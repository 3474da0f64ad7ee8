"""poolguard.reconfigure validation (no server: nothing here connects) and its helpers."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.pool import NullPool, QueuePool

import poolguard
from poolguard.integrations._live import RECONFIGURABLE, rewrite_params
from poolguard.integrations.sqlalchemy import guard_of

URL = "postgresql://app:s3cret-pw@127.0.0.1:1/app"


@pytest.fixture
def engine() -> Iterator[Any]:
    engine = poolguard.create_engine(URL, query_timeout=5, retry_attempts=3)
    yield engine
    engine.dispose()


def test_valid_changes_are_applied_together(engine: Any) -> None:
    state = guard_of(engine)
    old_settings, old_policy = state.settings, state.guard.policy
    changed = poolguard.reconfigure(
        engine, query_timeout="250ms", retry_attempts=5, breaker_failures=None, retry_budget="off"
    )
    assert changed == {
        "query_timeout": (5.0, 0.25),
        "retry_attempts": (3, 5),
        "breaker_failures": (5, None),
        "retry_budget": (0.2, None),
    }
    assert state.settings is not old_settings  # swapped, not mutated
    assert old_settings.query_timeout == 5.0
    assert state.guard.policy is not old_policy
    assert state.guard.policy.attempts == 5
    assert state.guard.breaker.failures is None
    assert state.guard.budget.unlimited
    snap = poolguard.stats(engine)
    assert snap["reconfigured"] == 1
    assert set(snap["settings"]) == set(RECONFIGURABLE)
    assert poolguard.reconfigure(engine, query_timeout=0.25) == {}  # nothing changed
    assert poolguard.stats(engine)["reconfigured"] == 1


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"query_timeout": "soon"}, "query_timeout"),
        ({"retry_attempts": 0}, "retry_attempts"),
        ({"retry_jitter": "lots"}, "retry_jitter"),
        ({"query_timout": 1}, "did you mean query_timeout"),
        ({"pool_size": 10}, "pool sizes are fixed"),
        ({"max_overflow": 1}, "pool sizes are fixed"),
        ({"url": "postgresql://other/db"}, "url cannot be changed"),
        ({"name": "other"}, "name cannot be changed"),
        # A relation between fields is checked on the whole new set.
        ({"retry_backoff_initial": 5, "retry_backoff_max": 1}, "retry_backoff"),
    ],
)
def test_a_bad_change_raises_and_nothing_is_applied(
    engine: Any, changes: dict[str, Any], named: str
) -> None:
    state = guard_of(engine)
    settings, policy = state.settings, state.guard.policy
    with pytest.raises(poolguard.ConfigError, match=named):
        poolguard.reconfigure(engine, **{"retry_timeout": 7, **changes})
    assert state.settings is settings
    assert state.guard.policy is policy
    assert poolguard.stats(engine)["reconfigured"] == 0


@pytest.mark.parametrize(
    ("pool_kw", "named"),
    [
        ({"poolclass": NullPool}, "NullPool"),
        ({"pool": QueuePool(lambda: None, pool_size=1)}, "QueuePool"),  # has its own timeout
    ],
)
def test_acquire_timeout_refused_where_it_has_no_effect(pool_kw: Any, named: str) -> None:
    engine = poolguard.create_engine(URL, **pool_kw)
    try:
        with pytest.raises(poolguard.ConfigError, match=rf"acquire_timeout.*{named}"):
            poolguard.reconfigure(engine, acquire_timeout=3)
        poolguard.reconfigure(engine, query_timeout=3)
    finally:
        engine.dispose()


def test_not_a_pool() -> None:
    with pytest.raises(poolguard.ConfigError, match="takes an engine"):
        poolguard.reconfigure(object(), query_timeout=1)


def test_log_has_old_and_new_and_no_password(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="poolguard"):
        poolguard.reconfigure(engine, query_timeout=None, max_idle="5m")
    (record,) = [r for r in caplog.records if "reconfigured" in r.getMessage()]
    assert record.name == "poolguard.postgres"
    assert "query_timeout: 5s -> off" in record.getMessage()
    assert "max_idle: 10m -> 5m" in record.getMessage()
    assert "s3cret" not in record.getMessage()


def test_connect_params_are_rewritten_only_where_poolguard_set_them() -> None:
    built = {"options": "-c statement_timeout=5000", "connect_timeout": 5}
    current = {"options": "-c statement_timeout=250 -c lock_timeout=100", "connect_timeout": 2}
    params = {
        "options": "-c statement_timeout=5000 -c search_path=app",  # poolguard's, then the user's
        "connect_timeout": 5,
        "application_name": "x",
    }
    assert rewrite_params(params, built, current) == {
        "options": "-c statement_timeout=250 -c lock_timeout=100 -c search_path=app",
        "connect_timeout": 2,
        "application_name": "x",
    }
    users = {"connect_timeout": 9}  # the user's own value stays
    assert rewrite_params(users, built, current) == {
        "connect_timeout": 9,
        "options": current["options"],
    }
    assert rewrite_params(built, built, {}) == {}


def test_asyncpg_server_settings_are_rewritten_entry_by_entry() -> None:
    built = {"server_settings": {"statement_timeout": "5000", "lock_timeout": "100"}}
    current = {"server_settings": {"statement_timeout": "250"}}
    params = {  # poolguard's merged with the user's (who also overrode lock_timeout)
        "server_settings": {
            "statement_timeout": "5000", "lock_timeout": "7", "application_name": "app",
        },
    }  # fmt: skip
    assert rewrite_params(params, built, current) == {
        "server_settings": {
            "statement_timeout": "250", "lock_timeout": "7", "application_name": "app",
        },
    }  # fmt: skip
    assert rewrite_params(built, built, {}) == {}


def test_sighup_install_rules(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        monkeypatch.setenv("POOLGUARD_QUERY_TIMEOUT", "soon")
        with pytest.raises(poolguard.ConfigError, match="POOLGUARD_QUERY_TIMEOUT"):
            poolguard.reload_on_sighup(engine)  # the environment is read at install too
        assert signal.getsignal(signal.SIGHUP) is previous
        errors: list[BaseException] = []

        def elsewhere() -> None:
            try:
                poolguard.reload_on_sighup(engine)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert isinstance(errors[0], poolguard.ConfigError)
        assert "main thread" in str(errors[0])
    finally:
        signal.signal(signal.SIGHUP, previous)
