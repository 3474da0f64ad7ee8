"""Pure pieces of the SQLAlchemy/PostgreSQL integration: drop-in errors, lifetime jitter."""

from __future__ import annotations

import pickle
import sys

import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from psycopg import errors as pg_errors

import poolguard
from poolguard.backends import postgres as pg
from poolguard.config.settings import Settings
from poolguard.core.disposition import Action
from poolguard.core.retry import GiveUp, Guard
from poolguard.integrations.sqlalchemy._errors import as_dropin, make_error, sa_dropin
from poolguard.integrations.sqlalchemy._state import LIFETIME_JITTER, EngineState


def _sa_error(driver: psycopg.Error) -> sa_exc.OperationalError:
    err = sa_exc.OperationalError("SELECT 1", {}, driver)
    err.__cause__ = driver
    return err


def _assert_gave_up_note(err: BaseException, text: str) -> None:
    """PEP 678 notes exist from Python 3.11; on 3.10 poolguard adds none (the message has it)."""
    notes: list[str] = getattr(err, "__notes__", [])
    if sys.version_info < (3, 11):
        assert notes == []
    else:
        assert any(text in note for note in notes)


def _give_up(err: BaseException, action: Action = Action.FAIL, attempts: int = 1) -> GiveUp:
    return GiveUp(action, err, pg.classify(err), attempts, (), "why", None, "db")


def test_pool_timeout_is_sqlalchemy_timeout() -> None:
    err = sa_dropin(poolguard.PoolTimeout, "pool dry")
    assert isinstance(err, sa_exc.TimeoutError)
    assert isinstance(err, TimeoutError)
    assert not isinstance(err, sa_exc.OperationalError)


def test_server_statement_timeout_becomes_query_timeout() -> None:
    driver = pg_errors.QueryCanceled("canceling statement due to statement timeout")
    out = make_error(_give_up(_sa_error(driver)))
    assert isinstance(out, poolguard.QueryTimeout)
    assert isinstance(out, sa_exc.OperationalError)
    assert out.orig is driver
    assert "POOLGUARD_QUERY_TIMEOUT" in str(out)


def test_idle_in_transaction_becomes_transaction_timeout() -> None:
    driver = pg_errors.IdleInTransactionSessionTimeout("terminating connection")
    out = make_error(_give_up(_sa_error(driver)))
    assert isinstance(out, poolguard.TransactionTimeout)


def test_ambiguous_is_also_operational_error() -> None:
    driver = psycopg.OperationalError("consuming input failed: EOF")
    out = make_error(_give_up(_sa_error(driver), Action.AMBIGUOUS))
    assert isinstance(out, poolguard.AmbiguousResultError)
    assert isinstance(out, sa_exc.OperationalError)
    assert out.connection_invalidated


def test_other_errors_pass_through_annotated() -> None:
    original = _sa_error(pg_errors.UniqueViolation("dup"))
    assert make_error(_give_up(original, attempts=3)) is original
    _assert_gave_up_note(original, "3 attempts")


def test_bare_poolguard_errors_become_dropins() -> None:
    bare = poolguard.CircuitOpenError("open", hint="tune it")
    out = as_dropin(bare)
    assert isinstance(out, poolguard.CircuitOpenError)
    assert isinstance(out, sa_exc.OperationalError)
    assert str(out) == str(bare)
    assert as_dropin(out) is out


def test_dropins_pickle() -> None:
    err = sa_dropin(poolguard.QueryTimeout, "slow")
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, poolguard.QueryTimeout)


def _state(**settings: object) -> EngineState:
    s = Settings(**settings)  # type: ignore[arg-type]
    guard = Guard.from_settings(s, name="t", backend="postgres", classify=pg.classify)
    return EngineState(settings=s, guard=guard, pgbouncer=False, is_async=False, redacted_url="x")


def test_lifetime_is_jittered_below_the_maximum() -> None:
    state = _state(max_lifetime=100.0)
    values = [state.lifetime() for _ in range(500)]
    assert all(v is not None and 100 * (1 - LIFETIME_JITTER) <= v <= 100 for v in values)
    assert len(set(values)) > 100
    assert _state(max_lifetime=None).lifetime() is None


@pytest.mark.parametrize(("pgbouncer", "expected"), [(False, None), (True, "set_config")])
def test_local_timeouts_only_under_pgbouncer(pgbouncer: bool, expected: str | None) -> None:
    state = _state(query_timeout=1.0)
    state.pgbouncer = pgbouncer
    sql = state.local_timeouts_sql()
    assert (sql is None) if expected is None else (expected in (sql or ""))
