"""The pure parts of the conformance driver (tests/conformance/run.py): what makes CI fail.

The driver itself runs SQLAlchemy's and redis-py's suites (``make conformance``); here only its
judgement is tested: which outcome counts as a new failure, an expected difference, a newly
passing test, or not poolguard's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DRIVER = Path(__file__).resolve().parents[1] / "conformance" / "run.py"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance_run", DRIVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


PG_CLASS = "test/engine/test_transaction.py::ResetAgentTest_postgresql+psycopg"


def test_normalize_drops_the_server_version_only(run: ModuleType) -> None:
    assert run.normalize(f"{PG_CLASS}_15_18::test_x") == f"{PG_CLASS}::test_x"
    async_id = (
        "test/ext/asyncio/test_engine.py::AsyncEngineTest_mariadb+aiomysql_async_10_11_19::t[a-1]"
    )
    assert run.normalize(async_id) == (
        "test/ext/asyncio/test_engine.py::AsyncEngineTest_mariadb+aiomysql_async::t[a-1]"
    )
    plain = "tests/test_commands.py::TestRedisCommands::test_get_15"
    assert run.normalize(plain) == plain


def _outcomes(run: ModuleType, outcomes: dict[str, str]) -> object:
    return run.Outcomes(outcomes, {k: f"call: {k} broke" for k in outcomes}, {"guarded": 1}, 1.0)


def test_compare_sorts_every_outcome(run: ModuleType) -> None:
    pg_run = run.RUNS[0]
    listed = {
        ("postgresql", f"{PG_CLASS}::listed_fails"): run.Expected("postgresql", "", "intended"),
        ("postgresql", f"{PG_CLASS}::listed_passes"): run.Expected("postgresql", "", "gap"),
    }
    guarded = {
        f"{PG_CLASS}_15_18::ok": "passed",
        f"{PG_CLASS}_15_18::listed_passes": "passed",
        f"{PG_CLASS}_15_18::listed_fails": "failed",
        f"{PG_CLASS}_15_18::new": "failed",
        f"{PG_CLASS}_15_18::skipped_only_with_poolguard": "skipped",
        f"{PG_CLASS}_15_18::fails_plain_too": "failed",
        f"{PG_CLASS}_15_18::skipped_both": "skipped",
        f"{PG_CLASS}_15_18::no_baseline": "failed",
    }
    plain = {
        f"{PG_CLASS}_15_18::listed_fails": "passed",
        f"{PG_CLASS}_15_18::new": "passed",
        f"{PG_CLASS}_15_18::skipped_only_with_poolguard": "passed",
        f"{PG_CLASS}_15_18::fails_plain_too": "failed",
        f"{PG_CLASS}_15_18::skipped_both": "skipped",
    }
    v = run.compare(pg_run, _outcomes(run, guarded), _outcomes(run, plain), listed)
    assert v.passed == 2
    assert v.newly_passing == [f"{PG_CLASS}::listed_passes"]
    assert v.expected == [f"{PG_CLASS}::listed_fails"]
    assert sorted(v.new) == [
        f"{PG_CLASS}_15_18::{name}"
        for name in ("new", "no_baseline", "skipped_only_with_poolguard")
    ]
    assert (v.failing_both, v.skipped_both) == (1, 1)


def test_a_listed_difference_is_per_backend(run: ModuleType) -> None:
    maria_run = next(r for r in run.RUNS if r.backend == "mariadb")
    test = "test/orm/test_session.py::SessionTest::test_x"
    listed = {("postgresql", test): run.Expected("postgresql", test, "intended")}
    v = run.compare(
        maria_run,
        _outcomes(run, {test: "failed"}),
        _outcomes(run, {test: "passed"}),
        listed,
    )
    assert list(v.new) == [test]


def test_report_fails_on_new_failures_and_only_strictly_on_newly_passing(
    run: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = run.Verdict(run.RUNS[0], passed=3)
    newly = run.Verdict(run.RUNS[0], passed=3, newly_passing=[f"{PG_CLASS}::t"])
    listed = {("postgresql", f"{PG_CLASS}::t"): run.Expected("postgresql", "t", "gap")}
    assert run.report([clean], {}, strict=False) == 0
    assert run.report([newly], listed, strict=False) == 0
    assert "NEWLY PASSING" in capsys.readouterr().out
    assert run.report([newly], listed, strict=True) == run.NEW_FAILURE
    broken = run.Verdict(run.RUNS[0], new={f"{PG_CLASS}_15_18::t": "call: boom"})
    assert run.report([broken], {}, strict=False) == run.NEW_FAILURE


def test_read_expected(run: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "expected.txt"
    path.write_text(
        "# comment | with | bars\n\n"
        "postgresql | test/a.py::T::t | intended: one line, | bars allowed in the reason\n"
    )
    entry = run.read_expected(path)[("postgresql", "test/a.py::T::t")]
    assert entry.reason == "intended: one line, | bars allowed in the reason"
    path.write_text("postgresql | test/a.py::T::t\n")
    with pytest.raises(run.HarnessError, match=r"expected\.txt:1"):
        run.read_expected(path)


def test_the_checked_in_list_parses_and_names_known_runs(run: ModuleType) -> None:
    entries = run.read_expected()
    assert entries
    for entry in entries.values():
        assert any(run.covers(r, entry) for r in run.RUNS), entry


def test_covers_matches_backend_and_test_file(run: ModuleType) -> None:
    pg_sync, pg_async = run.RUNS[0], run.RUNS[1]
    entry = run.Expected("postgresql", "test/ext/asyncio/test_engine.py::T::t", "r")
    assert run.covers(pg_async, entry)
    assert not run.covers(pg_sync, entry)
    pool = run.Expected("postgresql", "test/engine/test_pool.py::PoolTest::test_x", "r")
    assert run.covers(pg_sync, pool)
    assert not run.covers(pg_sync, run.Expected("mariadb", pool.test, "r"))
