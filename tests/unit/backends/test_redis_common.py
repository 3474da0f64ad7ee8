"""Pure parts of the redis-py integration: timeouts, overrides, errors, settings mapping."""

from __future__ import annotations

import socket

import pytest
import redis.exceptions as rex

import poolguard
import poolguard.redis
from poolguard.backends import redis as backend
from poolguard.config.settings import Settings
from poolguard.core import Action, Classification, Disposition, GiveUp
from poolguard.errors import AmbiguousResultError, CircuitOpenError, ConfigError, QueryTimeout
from poolguard.integrations.redis import _common as c


def info(*args: object) -> backend.CommandInfo:
    return backend.command_info(args)


def test_command_timeout_is_the_configured_one_without_deadline_or_block() -> None:
    assert c.command_timeout(0.1, info("GET", "k"), ("GET", "k")) == 0.1


def test_blocking_commands_get_their_block_time_on_top() -> None:
    args = ("BLPOP", "l", 2)
    assert c.command_timeout(0.1, info(*args), args) == pytest.approx(2.1)
    forever = ("BLPOP", "l", 0)
    assert c.command_timeout(0.1, info(*forever), forever) is None


def test_the_deadline_caps_the_socket_timeout() -> None:
    with poolguard.deadline(0.05):
        timeout = c.command_timeout(5.0, info("GET", "k"), ("GET", "k"))
    assert timeout is not None
    assert 0 < timeout <= 0.05
    with poolguard.deadline(0.05):
        forever = ("BLPOP", "l", 0)
        timeout = c.command_timeout(5.0, info(*forever), forever)
    assert timeout is not None
    assert timeout <= 0.05


def test_a_spent_deadline_raises_a_dropin_query_timeout() -> None:
    with poolguard.deadline(0), pytest.raises(QueryTimeout) as caught:
        c.command_timeout(5.0, info("GET", "k"), ("GET", "k"))
    assert isinstance(caught.value, rex.TimeoutError)
    assert isinstance(caught.value, TimeoutError)


def test_pipeline_timeout_adds_every_block() -> None:
    stack = [(("BLPOP", "a", 1), {}), (("GET", "k"), {}), (("BRPOP", "b", 2), {})]
    assert c.pipeline_timeout(0.5, stack) == pytest.approx(3.5)
    assert c.pipeline_timeout(0.5, [(("BLPOP", "a", 0), {})]) is None


def test_idempotent_override_is_scoped() -> None:
    incr = ("INCR", "n")
    assert not c.command_idempotent(info(*incr), incr)
    with poolguard.redis.idempotent():
        assert c.command_idempotent(info(*incr), incr)
        with poolguard.redis.not_idempotent():
            assert not c.command_idempotent(info("GET", "k"), ("GET", "k"))
    assert not c.command_idempotent(info(*incr), incr)


def test_pipeline_is_idempotent_only_if_every_command_is() -> None:
    reads = [(("GET", "a"), {}), (("SET", "b", 1), {})]
    assert c.pipeline_idempotent(None, reads)
    assert not c.pipeline_idempotent(None, [*reads, (("INCR", "n"), {})])
    assert c.pipeline_idempotent(True, [(("INCR", "n"), {})])
    assert not c.pipeline_idempotent(False, reads)


def _give_up(action: Action, error: BaseException) -> GiveUp:
    cls = Classification(Disposition.RETRY_IF_IDEMPOTENT, "read_timeout")
    return GiveUp(action, error, cls, 1, (), "why", None, "redis")


def test_ambiguity_is_also_the_redis_error_users_catch() -> None:
    original = rex.TimeoutError("Timeout reading from socket")
    c.note_command(original, "INCRBY")
    err = c.give_up_error(_give_up(Action.AMBIGUOUS, original), "redis pool 'redis'")
    assert isinstance(err, AmbiguousResultError)
    assert isinstance(err, rex.TimeoutError)
    assert "INCRBY" in str(err)
    assert "may have been applied" in str(err)
    lost = c.give_up_error(_give_up(Action.AMBIGUOUS, rex.ConnectionError("x")), "p")
    assert isinstance(lost, rex.ConnectionError)
    assert isinstance(lost, AmbiguousResultError)


def test_other_give_ups_return_the_original() -> None:
    original = rex.ResponseError("WRONGTYPE")
    assert c.give_up_error(_give_up(Action.FAIL, original), "p") is original


def test_core_errors_are_wrapped_as_redis_errors() -> None:
    wrapped = c.wrap_own(CircuitOpenError("open"))
    assert isinstance(wrapped, rex.ConnectionError)
    assert isinstance(wrapped, CircuitOpenError)
    timeout = c.wrap_own(QueryTimeout("late"))
    assert isinstance(timeout, rex.TimeoutError)


def test_pool_kwargs_disable_redis_py_retries_and_bound_the_pool() -> None:
    settings = Settings.from_env({}, backend="redis", url="redis://h:1/0", tcp_keepalive=30)
    kwargs = c.pool_kwargs(settings, unix=False)
    assert kwargs["retry"].get_retries() == 0
    assert kwargs["max_connections"] == settings.pool_size + settings.max_overflow
    assert kwargs["timeout"] == settings.acquire_timeout
    assert kwargs["socket_keepalive"] is True
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert kwargs["socket_keepalive_options"][socket.TCP_KEEPIDLE] == 30
    assert "socket_keepalive" not in c.pool_kwargs(settings, unix=True)


def test_millisecond_settings_from_the_environment() -> None:
    env = {
        "REDIS_URL": "redis://h:6379/0",
        "POOLGUARD_QUERY_TIMEOUT": "5s",
        "POOLGUARD_REDIS_QUERY_TIMEOUT": "100ms",
        "POOLGUARD_REDIS_CONNECT_TIMEOUT": "250ms",
    }
    settings = Settings.from_env(env, backend="redis")
    assert settings.query_timeout == pytest.approx(0.1)
    assert settings.connect_timeout == pytest.approx(0.25)


def test_from_url_rejects_a_redis_py_retry() -> None:
    with pytest.raises(ConfigError, match="retry"):
        poolguard.redis.from_url("redis://127.0.0.1:1/0", retry_on_timeout=True)


def test_from_url_builds_without_connecting() -> None:
    client = poolguard.redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    try:
        assert client.get_connection_kwargs()["decode_responses"] is True
        assert poolguard.redis.stats(client)["size"] == 0
    finally:
        client.close()


def test_stats_needs_a_poolguard_client() -> None:
    import redis

    with pytest.raises(TypeError):
        poolguard.redis.stats(redis.Redis())


def test_public_is_idempotent() -> None:
    assert poolguard.redis.is_idempotent("SET", "k", "v")
    assert not poolguard.redis.is_idempotent("SET", "k", "v", "NX")
