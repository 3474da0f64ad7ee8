"""Shared test configuration. The fixtures live in the ``poolguard`` pytest plugin
(poolguard/testing/plugin.py, registered through the pytest11 entry point)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport, path: Path) -> None:
    """Under CI=true a skipped integration test is a failure: a missing server package,
    binary (redis-sentinel, say) or test extra must be installed by .ci/run, not skipped."""
    skipped = report.skipped and not hasattr(report, "wasxfail")
    if skipped and _in_ci() and _INTEGRATION in path.parents:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true (every integration test must run): {report.longrepr}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    _fail_skip_in_ci(report, Path(str(item.path)))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    report = yield  # a module-level importorskip() skips the whole module at collection
    _fail_skip_in_ci(report, Path(str(collector.path)))
    return report


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """For pytest-docker, used only when POOLGUARD_TEST_SERVERS=docker."""
    return str(Path(__file__).resolve().parent.parent / "docker" / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup() -> str:
    """Wait for the compose healthchecks, not just for the containers to exist."""
    return "up --build -d --wait"
