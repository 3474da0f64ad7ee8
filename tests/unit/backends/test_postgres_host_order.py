"""Multi-host connects: the order hosts are tried in (``backends.postgres._reordered``).

The host that accepted the last connection first, hosts whose last attempt failed last, the
others in between, each group in the order written; only with a target_session_attrs other
than "any" and without load_balance_hosts=random.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from poolguard.backends import postgres as pg

RW = {"host": "a,b,c", "port": "1,2,3", "target_session_attrs": "read-write"}


@pytest.fixture(autouse=True)
def _fresh_status() -> Iterator[None]:
    saved = dict(pg._host_status)
    pg._host_status.clear()
    yield
    pg._host_status.clear()
    pg._host_status.update(saved)


def _order(**kwargs: str) -> tuple[str, str]:
    out = pg._reordered("", dict(kwargs))
    return out["host"], out["port"]


def test_written_order_until_something_is_known() -> None:
    assert _order(**RW) == ("a,b,c", "1,2,3")


def test_failed_host_goes_last_and_the_last_good_one_first() -> None:
    pg._host_status[("a", "1")] = (False, 10.0)
    assert _order(**RW) == ("b,c,a", "2,3,1")
    pg._host_status[("c", "3")] = (True, 11.0)
    assert _order(**RW) == ("c,b,a", "3,2,1")
    pg._host_status[("b", "2")] = (True, 12.0)  # the most recent success wins
    assert _order(**RW) == ("b,c,a", "2,3,1")


def test_one_port_for_all_hosts() -> None:
    pg._host_status[("a", "5432")] = (False, 1.0)
    out = pg._reordered("", {"host": "a,b", "port": "5432", "target_session_attrs": "primary"})
    assert (out["host"], out["port"]) == ("b,a", "5432,5432")


@pytest.mark.parametrize(
    "extra",
    [
        {"target_session_attrs": "any"},
        {"load_balance_hosts": "random"},
        {"hostaddr": "127.0.0.1,127.0.0.2,127.0.0.3"},
    ],
)
def test_left_alone(extra: dict[str, str]) -> None:
    pg._host_status[("a", "1")] = (False, 10.0)
    kwargs = {**RW, **extra}
    assert pg._reordered("", dict(kwargs)) == kwargs


def test_attempts_are_tracked_only_with_target_session_attrs() -> None:
    assert pg._attempt_host("host=a port=1 target_session_attrs=read-write") == ("a", "1")
    assert pg._attempt_host("host=a port=1") is None
    assert pg._attempt_host("host=a port=1 target_session_attrs=any") is None


@pytest.mark.parametrize(
    "why", ["session is read-only", "server is in hot standby mode", "session is not read-only"]
)
def test_a_server_refused_for_target_session_attrs_is_a_connect_retry(why: str) -> None:
    """Mid-failover (no primary yet, or a demoted one) every host may be refused: nothing was
    sent, the connect is retried (and counts towards the breaker)."""
    import psycopg

    from poolguard.core.disposition import Disposition

    err = psycopg.OperationalError(
        f'connection failed: connection to server at "10.0.0.1", port 5432 failed: {why}'
    )
    found = pg.classify(err)
    assert found.disposition is Disposition.RETRY
    assert found.connect_phase
