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


def test_blocking_commands_get_their_block_time_and_the_grace_on_top() -> None:
    args = ("BLPOP", "l", 2)
    assert c.command_timeout(0.1, info(*args), args) == pytest.approx(2.1 + c.BLOCK_GRACE)
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
    assert c.pipeline_timeout(0.5, stack) == pytest.approx(3.5 + c.BLOCK_GRACE)
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


# -- redis-py retry keywords: compatible values accepted, conflicting ones refused with why ------


@pytest.mark.parametrize(
    "options",
    [
        {"retry": None},
        {"retry_on_timeout": False},
        {"retry_on_error": []},
        {"retry_on_error": None},
        {"retry_on_timeout": False, "retry_on_error": []},
    ],
)
def test_retry_keywords_matching_poolguards_policy_are_accepted(options: dict[str, object]) -> None:
    client = poolguard.redis.from_url("redis://127.0.0.1:1/0", **options)
    try:
        assert client.get_retry().get_retries() == 0  # redis-py's own layer stays off
    finally:
        client.close()


def test_a_retry_with_zero_retries_is_accepted_sync_and_async() -> None:
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.retry import Retry

    for retry in (Retry(NoBackoff(), 0), Retry(ExponentialBackoff(), 0)):
        client = poolguard.redis.from_url("redis://127.0.0.1:1/0", retry=retry)
        assert client.get_retry().get_retries() == 0
        client.close()
        aclient = poolguard.redis.async_from_url(
            "redis://127.0.0.1:1/0", retry=retry, retry_on_timeout=False
        )
        assert aclient.get_retry().get_retries() == 0


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"retry_on_timeout": True}, "applied twice"),
        ({"retry_on_error": [rex.TimeoutError]}, "whether or not they may already have run"),
        ({"retry": "3"}, "not a redis.retry.Retry"),
    ],
)
def test_conflicting_retry_keywords_are_refused_with_the_reason(
    options: dict[str, object], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        poolguard.redis.from_url("redis://127.0.0.1:1/0", **options)
    assert "retry_attempts=" in str(refused.value)
    with pytest.raises(ConfigError, match=reason):
        poolguard.redis.async_from_url("redis://127.0.0.1:1/0", **options)


def test_a_retry_that_resends_is_refused_and_the_equivalent_named() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with pytest.raises(ConfigError, match=r"retry_attempts=4") as refused:
        poolguard.redis.from_url("redis://127.0.0.1:1/0", retry=Retry(NoBackoff(), 3))
    assert "INCR" in str(refused.value)
    assert refused.value.variable == "retry"
    with pytest.raises(ConfigError, match="forever"):
        poolguard.redis.from_url("redis://127.0.0.1:1/0", retry=Retry(NoBackoff(), -1))


def test_retry_options_in_the_url_follow_the_same_rule() -> None:
    with pytest.raises(ConfigError, match="query string"):
        poolguard.redis.from_url("redis://127.0.0.1:1/0?retry_on_timeout=true")
    client = poolguard.redis.from_url("redis://127.0.0.1:1/0?retry_on_timeout=false")
    client.close()


def test_set_retry_accepts_compatible_and_refuses_conflicting_sync_and_async() -> None:
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.retry import Retry

    for client in (
        poolguard.redis.from_url("redis://127.0.0.1:1/0"),
        poolguard.redis.async_from_url("redis://127.0.0.1:1/0"),
    ):
        compatible = Retry(ExponentialBackoff(), 0)
        client.set_retry(compatible)
        assert client.get_retry() is compatible
        with pytest.raises(ConfigError, match="set_retry"):
            client.set_retry(Retry(NoBackoff(), 2))
        assert client.get_retry() is compatible  # the refused one was not stored
        with pytest.raises(ConfigError):
            client.connection_pool.set_retry(Retry(NoBackoff(), 2))


def test_the_urls_db_wins_over_the_db_keyword_as_in_redis_py() -> None:
    import redis

    ours = poolguard.redis.from_url("redis://127.0.0.1:1/0", db=1)
    theirs = redis.Redis.from_url("redis://127.0.0.1:1/0", db=1)
    try:
        assert ours.get_connection_kwargs()["db"] == theirs.get_connection_kwargs()["db"] == 0
        # Without a db in the URL the keyword applies, in both.
        keyword = poolguard.redis.from_url("redis://127.0.0.1:1", db=1)
        assert keyword.get_connection_kwargs()["db"] == 1
        keyword.close()
    finally:
        ours.close()
        theirs.close()


def test_the_default_pool_is_redis_pys_100_connections() -> None:
    client = poolguard.redis.from_url("redis://127.0.0.1:1/0")
    try:
        assert client.connection_pool.max_connections == 100
        assert poolguard.redis.settings_for("redis://h/0").retry_timeout == 3.0
    finally:
        client.close()


def test_pubsub_keywords_are_poolguards_not_redis_pys() -> None:
    gaps: list[object] = []
    client = poolguard.redis.from_url(
        "redis://127.0.0.1:1/0", pubsub_reconnect=True, on_resubscribe=gaps.append
    )
    try:
        assert "pubsub_reconnect" not in client.get_connection_kwargs()
        pubsub = client.pubsub()
        assert pubsub.guard_reconnect is True
        assert pubsub.guard_on_resubscribe == gaps.append
        assert client.pubsub(reconnect=False).guard_reconnect is False
    finally:
        client.close()


def test_reconnect_budget_honours_the_reads_timeout_with_a_floor() -> None:
    state = c.PubSubState()
    assert state.reconnect_budget(2.0) == 2.0  # blocking read: the connect timeout
    state.wait = 0.1
    assert state.reconnect_budget(2.0) == c.RECONNECT_FLOOR
    state.wait = 1.0
    assert state.reconnect_budget(2.0) == 1.0
    assert state.reconnect_budget(0.5) == 0.5
    state.wait = 0.0
    assert state.reconnect_budget(None) == c.RECONNECT_FLOOR


def test_pipeline_timeout_without_blocking_commands_is_the_configured_one() -> None:
    stack = [(("GET", "k"), {}), (("SET", "k", "v"), {})]
    assert c.pipeline_timeout(0.5, stack) == 0.5
    assert c.pipeline_timeout(None, stack) is None
    assert c.pipeline_timeout(0.5, []) == 0.5
    with poolguard.deadline(0.2):
        timeout = c.pipeline_timeout(0.5, stack)
    assert timeout is not None
    assert timeout <= 0.2


def test_pipeline_timeout_sees_blocking_commands_not_looked_up_yet() -> None:
    # A spelling never seen before is not in the lookup cache: it must still count.
    stack = [(("GET", "k"), {}), ((b"bRpOp", "b", 2), {})]
    assert c.pipeline_timeout(0.5, stack) == pytest.approx(2.5 + c.BLOCK_GRACE)
