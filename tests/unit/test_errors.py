"""The error tree and drop-in variants (poolguard/errors.py)."""

from __future__ import annotations

import pickle
import re
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


# --- "cannot connect" headlines (core/retry.py, config/address.py) -----------------------------

from poolguard.config.address import address_of  # noqa: E402
from poolguard.core.breaker import CircuitBreaker  # noqa: E402
from poolguard.core.disposition import Classification, Disposition  # noqa: E402
from poolguard.core.retry import Guard, RetryPolicy, cannot_connect, error_text  # noqa: E402


@pytest.mark.parametrize(
    ("url", "address"),
    [
        (f"postgresql+psycopg://app:{SECRET}@127.0.0.1:5432/db", "127.0.0.1:5432"),
        (f"postgres://app:{SECRET}@db.internal/db", "db.internal:5432"),
        (f"mysql://app:{SECRET}@h/db", "h:3306"),
        (f"mariadb+pymysql://app:{SECRET}@h:3307/db", "h:3307"),
        (f"redis://:{SECRET}@cache:6380/0", "cache:6380"),
        ("rediss://cache", "cache:6379"),
        ("unix:///run/redis.sock?db=1", "/run/redis.sock"),
        (f"postgresql:///db?host=/run/postgresql&password={SECRET}", "/run/postgresql"),
        (f"postgresql://u:{SECRET}@h1:5432,h2:5433/db", "h1:5432,h2:5433"),
        (f"postgresql://u:{SECRET}@[::1]/db", "[::1]:5432"),
        ("postgresql://u:p/a@ss@h/db", "h:5432"),  # unencoded "/" and "@" in the password
        (f"postgresql://u@h/db?password={SECRET}", "h:5432"),
    ],
)
def test_address_of_never_shows_credentials(url: str, address: str) -> None:
    assert address_of(url) == address
    assert SECRET not in address_of(url)


def test_error_text_unwraps_and_adds_the_systems_reason() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    try:
        raise OSError("Can't connect to MySQL server on '127.0.0.1'") from refused
    except OSError as exc:
        driver = exc

    class Wrapper(Exception):
        orig = driver

    text = error_text(Wrapper("(wrapper) boom"))
    assert text == "Can't connect to MySQL server on '127.0.0.1' (Connection refused)"
    assert error_text(ValueError("a\n\tb   c")) == "a b c"
    assert len(error_text(ValueError("x" * 1000))) <= 300


def test_cannot_connect_headline_then_what_to_tune() -> None:
    message, hint = cannot_connect(
        "db1",
        "h:5432",
        "connection refused",
        attempts=3,
        elapsed=2.04,
        ending="circuit breaker open",
        env_prefix="POOLGUARD_REDIS_",
    )
    assert message == (
        "db1: cannot connect to h:5432: connection refused (3 attempts in 2.0s; circuit breaker"
        " open)"
    )
    assert "POOLGUARD_REDIS_CONNECT_TIMEOUT" in hint
    assert "POOLGUARD_REDIS_RETRY_TIMEOUT" in hint
    message, _ = cannot_connect("db1", None, None, attempts=0, elapsed=0.0, ending="x")
    assert message == "db1: cannot connect to the server (not tried; x)"


class _Refused(Exception):
    pass


def _guard(clock: list[float]) -> Guard:
    refused = Classification(Disposition.RETRY, "connect_refused", connect_phase=True)
    return Guard(
        "db1",
        "test",
        lambda exc: refused,
        policy=RetryPolicy(attempts=3, timeout=1.0),
        breaker=CircuitBreaker(2, 30.0, clock=lambda: clock[0]),
        clock=lambda: clock[0],
        target="db.internal:5432",
    )


def test_breaker_rejection_says_what_is_unreachable_first() -> None:
    clock = [100.0]
    guard = _guard(clock)

    def attempt(_attempts: object) -> None:
        clock[0] += 0.1
        raise _Refused("connection refused by db.internal")

    with pytest.raises(CircuitOpenError) as first:
        guard.run_with(attempt, sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    guard.policy = RetryPolicy(attempts=3, timeout=0.1)  # too short to wait for the probe
    with pytest.raises(CircuitOpenError) as second:  # rejected before trying
        guard.run_with(attempt, sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    for err in (first.value, second.value):
        assert str(err).startswith(
            "db1: cannot connect to db.internal:5432: connection refused by db.internal ("
        )
        assert "circuit breaker open" in err.message
        assert "BREAKER_FAILURES" in str(err)
    assert re.search(r"\d attempts in \d\.\ds", first.value.message)
    assert isinstance(first.value.__cause__, _Refused)
    assert "not tried" in second.value.message
    # Each failed connect is counted once (the rejection before trying is not a connect).
    assert guard.stats.count("connect_failures") == first.value.attempts


def test_connect_failures_not_counted_twice_where_the_integration_counts_them() -> None:
    clock = [100.0]
    guard = _guard(clock)
    guard.counts_connect_failures = False  # Redis / psycopg_pool count where they connect

    def attempt(_attempts: object) -> None:
        raise _Refused("refused")

    with pytest.raises(CircuitOpenError):
        guard.run_with(attempt, sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    assert guard.stats.count("connect_failures") == 0
