"""The error tree and drop-in variants (poolguard/errors.py)."""

from __future__ import annotations

import pickle
import threading

import psycopg
import pytest
import redis.exceptions
import sqlalchemy.exc

from poolguard.errors import (
    AmbiguousResultError,
    AttemptRecord,
    CircuitOpenError,
    ConfigError,
    ConnectTimeout,
    PoolguardError,
    PoolTimeout,
    QueryTimeout,
    TransactionTimeout,
    dropin,
    dropin_class,
)

SECRET = "hunter2-s3cret"

PAIRS = [
    (QueryTimeout, sqlalchemy.exc.OperationalError),
    (PoolTimeout, sqlalchemy.exc.TimeoutError),
    (ConnectTimeout, redis.exceptions.TimeoutError),
    (AmbiguousResultError, redis.exceptions.ConnectionError),
    (CircuitOpenError, redis.exceptions.ConnectionError),
    (QueryTimeout, psycopg.OperationalError),
    (AmbiguousResultError, psycopg.OperationalError),
    (PoolTimeout, (sqlalchemy.exc.TimeoutError, KeyError)),
]


def test_tree() -> None:
    for cls in (
        ConfigError,
        PoolTimeout,
        ConnectTimeout,
        QueryTimeout,
        TransactionTimeout,
        CircuitOpenError,
        AmbiguousResultError,
    ):
        assert issubclass(cls, PoolguardError)
        assert cls.__doc__
    for cls in (PoolTimeout, ConnectTimeout, QueryTimeout, TransactionTimeout):
        assert issubclass(cls, TimeoutError)
    assert issubclass(ConfigError, ValueError)
    assert not issubclass(AmbiguousResultError, TimeoutError)


def test_message_hint_and_fields() -> None:
    history = [AttemptRecord(1, "connect_refused", "OperationalError", 0.05)]
    err = QueryTimeout("query took too long", attempts=2, history=history, hint="raise X")
    assert str(err) == "query took too long (raise X)"
    assert repr(err) == "QueryTimeout('query took too long')"
    assert err.attempts == 2
    assert err.history == tuple(history)
    assert str(QueryTimeout("bare")) == "bare"
    c = ConfigError("bad POOLGUARD_POOL_SIZE", variable="POOLGUARD_POOL_SIZE")
    assert c.variable == "POOLGUARD_POOL_SIZE"


@pytest.mark.parametrize(("base", "foreign"), PAIRS, ids=lambda x: getattr(x, "__name__", ""))
def test_dropin_is_both(base: type[PoolguardError], foreign: type[BaseException]) -> None:
    err = dropin(base, foreign, "db1: gave up", attempts=3, hint="tune it")
    foreign_types = foreign if isinstance(foreign, tuple) else (foreign,)
    assert isinstance(err, base)
    assert isinstance(err, PoolguardError)
    for f in foreign_types:
        assert isinstance(err, f)
    assert str(err) == "db1: gave up (tune it)"
    assert err.message == "db1: gave up"
    assert err.attempts == 3
    assert err.args == ("db1: gave up",)
    with pytest.raises(foreign_types[0]):
        raise err


def test_dropin_class_is_cached_per_combination() -> None:
    a = dropin_class(QueryTimeout, sqlalchemy.exc.OperationalError)
    assert a is dropin_class(QueryTimeout, sqlalchemy.exc.OperationalError)
    assert type(dropin(QueryTimeout, sqlalchemy.exc.OperationalError, "x")) is a
    assert type(dropin(QueryTimeout, [sqlalchemy.exc.OperationalError], "x")) is a
    assert a is not dropin_class(QueryTimeout, psycopg.OperationalError)
    assert a is not dropin_class(ConnectTimeout, sqlalchemy.exc.OperationalError)
    assert a.__name__ == "QueryTimeout_OperationalError"
    assert a.__module__ == "poolguard.errors"
    assert a.__doc__ == QueryTimeout.__doc__


def test_dropin_class_cache_is_thread_safe() -> None:
    class Foreign(Exception):
        pass

    made: list[type[BaseException]] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        made.append(dropin_class(QueryTimeout, Foreign))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in made}) == 1


def test_chained_with_from() -> None:
    original = psycopg.OperationalError("server closed the connection unexpectedly")

    def wrapped() -> None:
        try:
            raise original
        except psycopg.OperationalError as exc:
            raise dropin(
                AmbiguousResultError,
                sqlalchemy.exc.OperationalError,
                "db1: the COMMIT's reply was lost",
                orig=exc,
                statement="COMMIT",
                params=None,
                connection_invalidated=True,
            ) from exc

    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        wrapped()
    err = info.value
    assert err.__cause__ is original
    assert err.orig is original
    assert err.connection_invalidated is True
    assert isinstance(err, AmbiguousResultError)


def test_attrs_never_leak_into_messages() -> None:
    url = f"postgresql://app:{SECRET}@db/app"
    err = dropin(
        QueryTimeout,
        sqlalchemy.exc.OperationalError,
        "db1: statement timed out",
        params={"password": SECRET},
        statement=f"ALTER USER app PASSWORD '{SECRET}'",
        url=url,
        orig=RuntimeError(url),
    )
    for text in (str(err), repr(err), *map(str, err.args)):
        assert SECRET not in text
    assert err.params == {"password": SECRET}  # still there for code that reads them


def test_psycopg_variant_keeps_psycopg_attributes_working() -> None:
    err = dropin(QueryTimeout, psycopg.OperationalError, "db1: timed out")
    # psycopg's properties read fields set by its own constructor.
    assert err.sqlstate is None
    assert err.pgconn is None
    assert err.pgresult is None
    assert err.diag.message_primary is None
    assert str(err) == "db1: timed out"


@pytest.mark.parametrize(("base", "foreign"), PAIRS, ids=lambda x: getattr(x, "__name__", ""))
def test_dropin_pickles(base: type[PoolguardError], foreign: type[BaseException]) -> None:
    history = (AttemptRecord(1, "connect_refused", "OperationalError", 0.1),)
    err = dropin(base, foreign, "db1: gave up", attempts=2, history=history, hint="h", code="x")
    err.__notes__ = ["poolguard: a note"]  # what add_note() does on Python >= 3.11
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert (back.attempts, back.history, back.hint) == (2, history, "h")
    assert back.code == "x"  # type: ignore[attr-defined]
    assert back.__notes__ == ["poolguard: a note"]


def test_plain_errors_pickle() -> None:
    history = (AttemptRecord(1, "r", "E", 0.1),)
    for err in (
        QueryTimeout("m", attempts=2, history=history, hint="h"),
        AmbiguousResultError("a"),
        CircuitOpenError("c", hint="h"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert (back.attempts, back.history, back.hint) == (err.attempts, err.history, err.hint)
    c = pickle.loads(pickle.dumps(ConfigError("bad", variable="X")))
    assert (str(c), c.variable) == ("bad", "X")
