"""Redis backend knowledge: reply/exception classification, the idempotency table, blocking."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex
from hypothesis import given
from hypothesis import strategies as st

from poolguard.backends import redis as backend
from poolguard.core import Action, Disposition, Operation, Scope, decide

SENT = Operation(sent=True)
NOT_SENT = Operation(sent=False)


# -- classification ---------------------------------------------------------------------------


def reply(text: str) -> Exception:
    """The exception redis-py's parser builds for an error reply (prefix stripped, status_code)."""
    from redis._parsers.base import BaseParser

    return BaseParser.parse_error(text)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (reply("LOADING Redis is loading the dataset in memory"), "loading"),
        (rex.BusyLoadingError("Redis is loading the dataset in memory"), "loading"),
        (
            reply("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
            "busy_script",
        ),
        (
            reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no"),
            "master_down",
        ),
        (reply("TRYAGAIN Multiple keys request during rehashing of slot"), "try_again"),
        (reply("CLUSTERDOWN The cluster is down"), "cluster_down"),
        (reply("READONLY You can't write against a read only replica."), "readonly_replica"),
        (
            rex.ResponseError("READONLY You can't write against a read only replica."),
            "readonly_replica",
        ),
        (reply("NOREPLICAS Not enough good replicas to write."), "no_replicas"),
        (reply("ERR max number of clients reached"), "too_many_clients"),
    ],
)
def test_replies_sent_before_execution_retry_any_command(exc: Exception, reason: str) -> None:
    c = backend.classify(exc)
    assert c.disposition is Disposition.RETRY
    assert c.reason == reason
    # Even a non-idempotent command that was sent: the server did not execute it.
    assert decide(c, SENT) is Action.RETRY


def test_readonly_drops_the_connection_and_suspects_the_pool() -> None:
    c = backend.classify(reply("READONLY You can't write against a read only replica."))
    assert c.disconnect
    assert c.scope is Scope.POOL


@pytest.mark.parametrize(
    "exc",
    [
        rex.AuthenticationError("invalid username-password pair"),
        reply("NOAUTH Authentication required."),
        reply("WRONGPASS invalid username-password pair or user is disabled."),
        reply("NOPERM this user has no permissions to run the 'get' command"),
        reply("ERR invalid password"),
    ],
)
def test_authentication_is_permanent_even_as_a_connection_error(exc: Exception) -> None:
    c = backend.classify(exc)
    assert c.disposition is Disposition.FAIL
    assert decide(c, NOT_SENT) is Action.FAIL


def test_authentication_error_is_permanent_even_in_the_connect_phase() -> None:
    exc = rex.AuthenticationError("invalid username-password pair")
    backend.mark_connect_phase(exc)
    assert backend.classify(exc).disposition is Disposition.FAIL
    assert not backend.classify(exc).connect_phase


@pytest.mark.parametrize(
    "exc",
    [
        reply("BUSYKEY Target key name already exists."),
        reply("BUSYGROUP Consumer Group name already exists"),
        reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
        reply("ERR value is not an integer or out of range"),
        reply("OOM command not allowed when used memory > 'maxmemory'."),
        reply("NOSCRIPT No matching script. Please use EVAL."),
        reply("EXECABORT Transaction discarded because of previous errors."),
        rex.WatchError("Watched variable changed."),
        rex.DataError("Invalid input"),
        TypeError("bad argument"),
    ],
)
def test_other_errors_are_final(exc: Exception) -> None:
    assert backend.classify(exc).disposition is Disposition.FAIL


def test_pool_exhaustion_is_not_retried_by_the_loop() -> None:
    c = backend.classify(rex.MaxConnectionsError("Too many connections"))
    assert c.disposition is Disposition.FAIL


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            rex.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            "connect_failed",
        ),
        (rex.TimeoutError("Timeout connecting to server"), "connect_timeout"),
    ],
)
def test_connect_phase_failures_retry_anything_and_count_for_the_breaker(
    exc: Exception, reason: str
) -> None:
    backend.mark_connect_phase(exc)
    c = backend.classify(exc)
    assert (c.disposition, c.reason, c.connect_phase) == (Disposition.RETRY, reason, True)
    assert decide(c, SENT) is Action.RETRY


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (rex.ConnectionError("Connection closed by server."), "connection_lost"),
        (rex.TimeoutError("Timeout reading from socket"), "read_timeout"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection_lost"),
    ],
)
def test_a_lost_reply_retries_only_idempotent_commands(exc: Exception, reason: str) -> None:
    c = backend.classify(exc)
    assert (c.disposition, c.reason, c.disconnect) == (
        Disposition.RETRY_IF_IDEMPOTENT,
        reason,
        True,
    )
    assert not c.connect_phase
    assert decide(c, Operation(sent=True, idempotent=True)) is Action.RETRY
    assert decide(c, Operation(sent=True, idempotent=False)) is Action.AMBIGUOUS
    assert decide(c, Operation(sent=False, idempotent=False)) is Action.RETRY


def test_the_same_error_class_on_connect_and_after_send_differs_only_by_the_mark() -> None:
    before, after = rex.ConnectionError("x"), rex.ConnectionError("x")
    backend.mark_connect_phase(before)
    assert backend.is_connect_phase(before)
    assert not backend.is_connect_phase(after)
    assert backend.classify(before).disposition is Disposition.RETRY
    assert backend.classify(after).disposition is Disposition.RETRY_IF_IDEMPOTENT


# -- idempotency table ------------------------------------------------------------------------

IDEMPOTENT: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("MGET", "a", "b"),
    ("HGETALL", "h"),
    ("SET", "k", "v"),
    ("SET", "k", "v", "EX", 10),
    ("SET", "k", "v", "XX"),
    ("SET", "k", "v", "KEEPTTL"),
    ("SETEX", "k", 10, "v"),
    ("MSET", "a", 1, "b", 2),
    ("DEL", "k"),
    ("UNLINK", "k"),
    ("HSET", "h", "f", "v"),
    ("HDEL", "h", "f"),
    ("SADD", "s", "m"),
    ("SREM", "s", "m"),
    ("ZADD", "z", 1, "m"),
    ("ZADD", "z", "NX", 1, "m"),
    ("ZREM", "z", "m"),
    ("EXPIRE", "k", 10),
    ("EXPIRE", "k", 10, "XX"),
    ("PEXPIREAT", "k", 1_900_000_000_000),
    ("PERSIST", "k"),
    ("LREM", "l", 0, "v"),
    ("LTRIM", "l", 0, 99),
    ("LTRIM", "l", -100, -1),
    ("SUNIONSTORE", "dst", "a", "b"),
    ("ZUNIONSTORE", "dst", 2, "a", "b"),
    ("SORT", "l"),
    ("SORT", "l", "STORE", "dst"),
    ("EVAL_RO", "return 1", 0),
    ("FCALL_RO", "f", 0),
    ("XREAD", "BLOCK", 100, "STREAMS", "s", "$"),
    ("PING",),
    ("CONFIG GET", "maxmemory"),
    ("CONFIG", "GET", "maxmemory"),
    ("SCRIPT LOAD", "return 1"),
    (b"GET", b"k"),
    ("get", "k"),
]

NOT_IDEMPOTENT: list[tuple[Any, ...]] = [
    ("INCR", "n"),
    ("INCRBY", "n", 1),
    ("DECR", "n"),
    ("HINCRBY", "h", "f", 1),
    ("APPEND", "k", "x"),
    ("LPUSH", "l", "v"),
    ("RPOP", "l"),
    ("BLPOP", "l", 1),
    ("XADD", "s", "*", "f", "v"),
    ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"),
    ("SPOP", "s"),
    ("GETDEL", "k"),
    ("GETSET", "k", "v"),
    ("SET", "k", "v", "GET"),
    ("SET", "k", "v", "NX"),
    ("SET", "k", "v", "NX", "PX", 30000),
    ("SETNX", "k", "v"),
    ("HSETNX", "h", "f", "v"),
    ("EXPIRE", "k", 10, "NX"),
    ("EXPIRE", "k", 10, "GT"),
    ("ZADD", "z", "INCR", 1, "m"),
    ("ZINCRBY", "z", 1, "m"),
    ("ZREMRANGEBYRANK", "z", 0, 0),
    ("LREM", "l", 1, "v"),
    ("LTRIM", "l", 1, -1),
    ("LTRIM", "l", 0, -2),
    ("SDIFFSTORE", "dst", "a", "dst"),
    ("ZUNIONSTORE", "dst", 2, "dst", "x"),
    ("BITOP", "OR", "dst", "dst", "x"),
    ("SORT", "l", "STORE", "l"),
    ("EVAL", "return 1", 0),
    ("EVALSHA", "abc", 0),
    ("FCALL", "f", 0),
    ("PUBLISH", "ch", "m"),
    ("RENAME", "a", "b"),
    ("MULTI",),
    ("EXEC",),
    ("WATCH", "k"),
    ("XGROUP CREATE", "s", "g", "$"),
    ("SOME.MODULECMD", "x"),
    ("NOSUCHCOMMAND",),
    ("COMMAND", "SOMETHING"),
]


@pytest.mark.parametrize("args", IDEMPOTENT, ids=lambda a: " ".join(map(str, a)))
def test_idempotent(args: tuple[Any, ...]) -> None:
    assert backend.is_idempotent(args)


@pytest.mark.parametrize("args", NOT_IDEMPOTENT, ids=lambda a: " ".join(map(str, a)))
def test_not_idempotent(args: tuple[Any, ...]) -> None:
    assert not backend.is_idempotent(args)


def test_unknown_commands_are_not_idempotent_and_do_not_grow_the_table() -> None:
    before = len(backend.TABLE)
    assert not backend.is_idempotent(("FROBNICATE", "x"))
    assert len(backend.TABLE) == before


def test_container_commands_depend_on_the_second_word() -> None:
    assert backend.command_name(("CONFIG", "get", "x")) == "CONFIG GET"
    assert backend.is_idempotent(("COMMAND",))
    assert backend.is_idempotent(("COMMAND", "INFO", "GET"))
    assert not backend.is_idempotent(("CONFIG", "REWRITE"))


def test_the_explicit_lists_do_not_contradict_each_other() -> None:
    reads_and_writes = set(backend._words(backend.READS)) | set(
        backend._words(backend.IDEMPOTENT_WRITES)
    )
    assert not reads_and_writes & set(backend._words(backend.NON_IDEMPOTENT))
    assert not set(backend.ARG_DEPENDENT) & set(backend._words(backend.NON_IDEMPOTENT))


def test_learn_adds_only_readonly_commands() -> None:
    added = backend.learn(
        {
            "json.get": {"flags": ["readonly"]},
            "json.set": {"flags": ["write", "denyoom"]},
            "json.blockingthing": {"flags": ["readonly", "blocking"]},
            "get": {"flags": ["readonly", "fast"]},
        }
    )
    try:
        assert added == 1
        assert backend.is_idempotent(("JSON.GET", "k"))
        assert not backend.is_idempotent(("JSON.SET", "k", "$", "1"))
    finally:
        backend.TABLE.pop("JSON.GET", None)
        backend._cache.pop("JSON.GET", None)


# -- blocking commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("BLPOP", "a", "b", 2), 2.0),
        (("BRPOP", "a", 0.5), 0.5),
        (("BLPOP", "a", 0), backend.BLOCK_FOREVER),
        (("BLMOVE", "a", "b", "LEFT", "RIGHT", 3), 3.0),
        (("BZPOPMIN", "z", 1), 1.0),
        (("BLMPOP", 4, 2, "a", "b", "LEFT"), 4.0),
        (("XREAD", "COUNT", 1, "BLOCK", 1500, "STREAMS", "s", "$"), 1.5),
        (("XREAD", "BLOCK", 0, "STREAMS", "s", "$"), backend.BLOCK_FOREVER),
        (("XREADGROUP", "GROUP", "g", "c", "BLOCK", 200, "STREAMS", "s", ">"), 0.2),
        (("XREAD", "STREAMS", "BLOCK", "$"), None),  # a stream named BLOCK is not an option
        (("XREAD", "COUNT", 5, "STREAMS", "s", "$"), None),
        (("WAIT", 1, 250), 0.25),
        (("GET", "k"), None),
    ],
)
def test_block_seconds(args: tuple[Any, ...], expected: float | None) -> None:
    assert backend.block_seconds(args) == expected


def test_sentinel_demoted_master_is_rejected_before_execution() -> None:
    # redis-py's SentinelManagedConnection turns READONLY into this ConnectionError.
    c = backend.classify(rex.ConnectionError(backend.DEMOTED_MASTER))
    assert c.disposition is Disposition.RETRY
    assert c.reason == "readonly_replica"
    assert decide(c, SENT) is Action.RETRY


# -- properties --------------------------------------------------------------------------------


_words_st = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(),
    st.floats(allow_nan=True),
    st.sampled_from(["GET", "NX", "XX", "EX", "STORE", "BLOCK", "STREAMS", "INCR", "0", "-1"]),
)


@given(st.sampled_from(sorted(backend.TABLE)), st.lists(_words_st, max_size=8))
def test_lookups_never_raise_on_any_arguments(name: str, rest: list[Any]) -> None:
    args = (*name.split(" "), *rest)
    assert isinstance(backend.is_idempotent(args), bool)
    seconds = backend.block_seconds(args)
    assert seconds is None or isinstance(seconds, float)


@given(st.lists(_words_st, max_size=6))
def test_set_with_get_or_nx_is_never_idempotent(rest: list[Any]) -> None:
    for flag in ("GET", "get", b"NX"):
        assert not backend.is_idempotent(("SET", "k", "v", *rest, flag))


@given(st.text(alphabet=st.characters(whitelist_categories=("Lu",)), min_size=1, max_size=10))
def test_unknown_names_are_not_idempotent(name: str) -> None:
    if name not in backend.TABLE and name not in backend.CONTAINERS:
        assert not backend.is_idempotent((name, "x"))
