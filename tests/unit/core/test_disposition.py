"""The retry-safety truth table, written out from DESIGN.md "Retry safety" — not from decide().

Every combination of Disposition, Position, sent, idempotent and unit_of_work (160 cases) is
checked against the grid below. How each cell follows from the rule:

* FAIL errors are permanent: never retried.
* Before send (Disposition.RETRY, or ``sent=False`` when the adapter *knows* nothing left the
  client) the server executed nothing: rule 1 retries the statement — as long as no earlier
  work is at stake. At LATER the transaction's earlier statements died with the connection (or
  the transaction is aborted), and at COMMIT the transaction is gone: only the whole unit can be
  re-run (RETRY_TRANSACTION under run_transaction, else FAIL and let the caller decide).
* RETRY_TRANSACTION (40001, 40P01, 1213): rule 2 re-runs the *whole* transaction, never one
  statement. An autocommit statement is its own whole transaction, so it may simply run again;
  inside an explicit transaction without run_transaction there is nothing we may re-run: FAIL.
* After send (RETRY_IF_IDEMPOTENT / AMBIGUOUS, sent): rule 3 retries idempotent statements at
  AUTOCOMMIT or FIRST only. A non-idempotent autocommit write whose reply was lost is AMBIGUOUS.
  A non-idempotent FIRST statement was never committed — the server rolls it back — so the unit
  may be re-run, but not the statement. LATER: "never retry mid-transaction", unit only.
  COMMIT whose reply was lost: AMBIGUOUS whatever the flags ("never transparently retry a COMMIT
  whose reply was lost").
"""

from __future__ import annotations

import itertools

import pytest

from poolguard.core.disposition import (
    Action,
    Classification,
    Disposition,
    Operation,
    Position,
    decide,
)

R, T, A, F = Action.RETRY, Action.RETRY_TRANSACTION, Action.AMBIGUOUS, Action.FAIL
CODES = {"R": R, "T": T, "A": A, "F": F}

# Columns: (idempotent, unit_of_work) = (no, no) (no, yes) (yes, no) (yes, yes)
GRID = """
disposition          position    sent    nn ny yn yy
FAIL                 AUTOCOMMIT  sent    F  F  F  F
FAIL                 AUTOCOMMIT  unsent  F  F  F  F
FAIL                 FIRST       sent    F  F  F  F
FAIL                 FIRST       unsent  F  F  F  F
FAIL                 LATER       sent    F  F  F  F
FAIL                 LATER       unsent  F  F  F  F
FAIL                 COMMIT      sent    F  F  F  F
FAIL                 COMMIT      unsent  F  F  F  F
RETRY                AUTOCOMMIT  sent    R  R  R  R
RETRY                AUTOCOMMIT  unsent  R  R  R  R
RETRY                FIRST       sent    R  R  R  R
RETRY                FIRST       unsent  R  R  R  R
RETRY                LATER       sent    F  T  F  T
RETRY                LATER       unsent  F  T  F  T
RETRY                COMMIT      sent    F  T  F  T
RETRY                COMMIT      unsent  F  T  F  T
RETRY_IF_IDEMPOTENT  AUTOCOMMIT  sent    A  A  R  R
RETRY_IF_IDEMPOTENT  AUTOCOMMIT  unsent  R  R  R  R
RETRY_IF_IDEMPOTENT  FIRST       sent    F  T  R  R
RETRY_IF_IDEMPOTENT  FIRST       unsent  R  R  R  R
RETRY_IF_IDEMPOTENT  LATER       sent    F  T  F  T
RETRY_IF_IDEMPOTENT  LATER       unsent  F  T  F  T
RETRY_IF_IDEMPOTENT  COMMIT      sent    A  A  A  A
RETRY_IF_IDEMPOTENT  COMMIT      unsent  F  T  F  T
RETRY_TRANSACTION    AUTOCOMMIT  sent    R  T  R  T
RETRY_TRANSACTION    AUTOCOMMIT  unsent  R  T  R  T
RETRY_TRANSACTION    FIRST       sent    F  T  F  T
RETRY_TRANSACTION    FIRST       unsent  F  T  F  T
RETRY_TRANSACTION    LATER       sent    F  T  F  T
RETRY_TRANSACTION    LATER       unsent  F  T  F  T
RETRY_TRANSACTION    COMMIT      sent    F  T  F  T
RETRY_TRANSACTION    COMMIT      unsent  F  T  F  T
AMBIGUOUS            AUTOCOMMIT  sent    A  A  R  R
AMBIGUOUS            AUTOCOMMIT  unsent  R  R  R  R
AMBIGUOUS            FIRST       sent    F  T  R  R
AMBIGUOUS            FIRST       unsent  R  R  R  R
AMBIGUOUS            LATER       sent    F  T  F  T
AMBIGUOUS            LATER       unsent  F  T  F  T
AMBIGUOUS            COMMIT      sent    A  A  A  A
AMBIGUOUS            COMMIT      unsent  F  T  F  T
"""

Case = tuple[Disposition, Position, bool, bool, bool]


def _parse(grid: str) -> dict[Case, Action]:
    table: dict[Case, Action] = {}
    rows = [line.split() for line in grid.strip().splitlines()[1:]]
    for disposition, position, sent, *cells in rows:
        assert len(cells) == 4, f"malformed row {disposition} {position} {sent}"
        flags = itertools.product((False, True), repeat=2)
        for (idempotent, unit), code in zip(flags, cells, strict=True):
            key = (Disposition[disposition], Position[position], sent == "sent", idempotent, unit)
            assert key not in table, f"duplicate row for {key}"
            table[key] = CODES[code]
    return table


EXPECTED = _parse(GRID)
ALL_CASES: list[Case] = list(
    itertools.product(Disposition, Position, (True, False), (False, True), (False, True))
)


def test_table_covers_every_combination() -> None:
    assert len(ALL_CASES) == 160
    assert set(EXPECTED) == set(ALL_CASES)


@pytest.mark.parametrize(
    "case", ALL_CASES, ids=lambda c: "-".join(str(getattr(x, "name", x)) for x in c)
)
def test_decide_matches_the_rule(case: Case) -> None:
    disposition, position, sent, idempotent, unit = case
    error = Classification(disposition, "test")
    op = Operation(position=position, idempotent=idempotent, sent=sent, unit_of_work=unit)
    assert decide(error, op) is EXPECTED[case]


@pytest.mark.parametrize("disconnect", [False, True])
@pytest.mark.parametrize("connect_phase", [False, True])
def test_decide_ignores_connection_flags(disconnect: bool, connect_phase: bool) -> None:
    # disconnect/scope/connect_phase steer invalidation and the breaker, not retry safety.
    for disposition, position, sent, idempotent, unit in ALL_CASES:
        error = Classification(disposition, "x", disconnect=disconnect, connect_phase=connect_phase)
        op = Operation(position, idempotent, sent, unit)
        assert decide(error, op) is EXPECTED[(disposition, position, sent, idempotent, unit)]


def test_never_retries_a_possibly_applied_non_idempotent_write() -> None:
    """The safety invariant, stated directly: after send, non-idempotent, not before-send."""
    for disposition, position, sent, idempotent, unit in ALL_CASES:
        if not sent or idempotent or disposition is not Disposition.RETRY_IF_IDEMPOTENT:
            continue
        action = decide(
            Classification(disposition, "x"), Operation(position, idempotent, sent, unit)
        )
        assert action is not Action.RETRY


def test_defaults() -> None:
    op = Operation()
    assert (op.position, op.idempotent, op.sent, op.unit_of_work) == (
        Position.AUTOCOMMIT,
        False,
        True,
        False,
    )
    c = Classification(Disposition.RETRY, "connect_refused")
    assert not c.disconnect
    assert not c.connect_phase
