"""Redis Cluster decisions without a server: which failures are retried, which feed the breaker,
which pipeline results mean "may have run"."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from poolguard.backends.redis import mark_connect_phase
from poolguard.core.disposition import Disposition
from poolguard.integrations.redis import _cluster as cl
from poolguard.integrations.redis.cluster import plain_cluster_url


def _connect_refused() -> rex.ConnectionError:
    exc = rex.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused.")
    mark_connect_phase(exc)
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        rex.ClusterDownError("The cluster is down"),
        rex.TryAgainError("Multiple keys request during rehashing of slot"),
        rex.MasterDownError(
            "Link with MASTER is down and replica-serve-stale-data is set to 'no'."
        ),
        rex.ReadOnlyError("You can't write against a read only replica."),
        rex.SlotNotCoveredError("Slot 42 is not covered by the cluster."),
        _connect_refused(),
    ],
    ids=["clusterdown", "tryagain", "masterdown", "readonly", "slot", "refused"],
)
def test_reconfiguring_failures_are_retried_like_connects_without_the_breaker(
    exc: Exception,
) -> None:
    c = cl.classify(exc)
    assert c.disposition is Disposition.RETRY
    assert c.connect_phase  # retried until the retry window ends, budget not charged
    assert not c.breaker  # one node failing over is not the cluster down
    assert not cl.may_have_run(exc)


def test_no_node_answering_the_refresh_feeds_the_breaker() -> None:
    exc = rex.RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: x"
    )
    c = cl.classify(exc)
    assert c.disposition is Disposition.RETRY
    assert c.connect_phase
    assert c.breaker


def test_lost_replies_and_other_errors() -> None:
    lost = rex.ConnectionError("Connection closed by server.")
    assert cl.classify(lost).disposition is Disposition.RETRY_IF_IDEMPOTENT
    assert cl.may_have_run(lost)
    assert cl.may_have_run(rex.TimeoutError("Timeout reading from socket"))
    assert cl.may_have_run(b"OK")
    assert cl.may_have_run(None)  # a nil reply (or one never read: counted as may have run)
    assert not cl.may_have_run(rex.MovedError("3999 127.0.0.1:6381"))
    assert not cl.may_have_run(rex.AskError("3999 127.0.0.1:6381"))
    assert cl.classify(rex.RedisClusterException("TTL exhausted.")).disposition is (
        Disposition.FAIL
    )
    assert cl.classify(rex.ResponseError("WRONGTYPE x")).disposition is Disposition.FAIL


def test_the_mark_ignores_writes_outside_an_attempt_and_while_suspended() -> None:
    cl.mark_sent()  # no attempt open: nothing to mark, no error
    with cl.attempt_mark() as mark:
        with cl.sent_suspended():
            cl.mark_sent()  # a handshake or CLUSTER SLOTS
        assert not mark.sent
        cl.mark_sent()
        assert mark.sent


def test_cluster_scheme_is_a_spelling_of_redis() -> None:
    assert plain_cluster_url("redis+cluster://:pw@h:7000") == "redis://:pw@h:7000"
    assert plain_cluster_url("rediss+cluster://h:7000") == "rediss://h:7000"
    assert plain_cluster_url("redis://h:7000") == "redis://h:7000"
    assert plain_cluster_url(None) is None
