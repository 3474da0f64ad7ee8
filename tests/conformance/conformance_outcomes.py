"""pytest plugin (``-p conformance_outcomes``): one outcome per test, written as JSON.

The driver (run.py) loads it into every conformance run, with or without poolguard, and reads
the file back (``CONFORMANCE_OUT``): a node id maps to ``passed``, ``failed`` or ``skipped``.
A test counts as failed if any phase failed (an error in setup or teardown is a failure too),
and as skipped only if it never ran. xfail counts as skipped, strict xpass as failed: both
are what the suite itself says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

OUT_ENV = "CONFORMANCE_OUT"
# A file of node ids: run only these (SQLAlchemy's backend-specific classes are generated at
# collection, so their node ids cannot be given to pytest on the command line).
SELECT_ENV = "CONFORMANCE_SELECT"
# Above this many characters a failure's text is cut: the summary needs the gist, not the trace.
MESSAGE_CHARS = 600

_outcomes: dict[str, str] = {}
_messages: dict[str, str] = {}
#: Filled by the routing plugins: how many engines/clients went through poolguard or not.
routing: dict[str, int] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select = os.environ.get(SELECT_ENV)
    if not select:
        return
    wanted = set(Path(select).read_text().splitlines())
    keep = [item for item in items if item.nodeid in wanted]
    drop = [item for item in items if item.nodeid not in wanted]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    seen = _outcomes.get(report.nodeid)
    if report.failed:
        _outcomes[report.nodeid] = "failed"
        _messages.setdefault(report.nodeid, _gist(report))
    elif report.skipped and seen is None:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and seen is None:
        _outcomes[report.nodeid] = "passed"


def _gist(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return f"{report.when}: {text}"[:MESSAGE_CHARS]


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(OUT_ENV)
    if not target:
        return
    payload = {"outcomes": _outcomes, "messages": _messages, "routing": routing}
    Path(target).write_text(json.dumps(payload, indent=0, sort_keys=True))
