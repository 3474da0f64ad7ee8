"""Lending an idle record to a keepalive ping (``_Handoff.lend`` / ``take_back``): a caller
arriving during the ping never waits for it (it gets another idle record, or room to open a
connection), the pool never holds more than its size, a waiter is served first on the way back,
and a record pinged across ``dispose()`` is not put back. Pure queue logic, no server.
"""

from __future__ import annotations

from typing import Any

from poolguard.integrations.sqlalchemy._handoff import CREATE, FairQueue


def pool_of(size: int, idle: list[str], *, max_overflow: int = 0) -> Any:
    """A queue as QueuePool(size) sets it up, with ``idle`` records returned to it."""
    q = FairQueue(size)
    q.set_overflow(-size)
    q.set_max_overflow(max_overflow)
    for _ in idle:
        assert q.take() is CREATE
    for record in idle:
        q.put(record)
    return q


def always(_record: Any) -> bool:
    return True


def test_a_caller_during_the_ping_gets_room_not_a_wait() -> None:
    # Pool of 1, its only connection idle: lent to a ping, the slot is free for a caller.
    q = pool_of(1, ["a"])
    assert q.lend(always) == "a"
    assert q.take() is CREATE  # not None: the caller opens a connection instead of waiting
    assert q.take_back("a", lambda: True) is False  # slot used meanwhile: "a" is closed
    assert q.take() is None  # and the pool is still at its size: 1 connection


def test_a_caller_during_the_ping_gets_another_idle_record() -> None:
    q = pool_of(2, ["a", "b"])
    assert q.lend(always) == "a"
    assert q.take() == "b"
    assert q.take_back("a", lambda: True) is True
    assert q.take() == "a"
    assert q.take() is None


def test_only_due_records_are_lent_and_a_quiet_pool_gets_its_record_back() -> None:
    q = pool_of(2, ["a", "b"])
    assert q.lend(lambda r: r == "b") == "b"
    assert q.lend(lambda r: r == "b") is None
    assert q.take_back("b", lambda: True) is True
    assert sorted([q.take(), q.take()]) == ["a", "b"]


def test_dispose_during_the_ping_closes_the_record() -> None:
    q = pool_of(1, ["a"])
    assert q.lend(always) == "a"
    assert q.take_back("a", lambda: False) is False
    assert q.take() is CREATE  # the slot is free again


def test_a_saturated_pool_never_exceeds_its_size() -> None:
    # Pool of 2, max_overflow 0: "a" checked out, "b" lent to a ping; a caller takes the lent
    # slot (opens a connection), the next finds nothing (it would wait, as without keepalive,
    # for a return). The pinged "b" cannot come back: it is closed; 2 connections, as configured.
    q = pool_of(2, ["a", "b"])
    assert q.take() == "a"
    assert q.lend(always) == "b"
    assert q.take() is CREATE
    assert q.take() is None
    assert q.take_back("b", lambda: True) is False
    assert q.take() is None
