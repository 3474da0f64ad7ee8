"""The demo's views without servers: the live table, the plain fallback."""

from __future__ import annotations

import io

from poolguard.demo.live import LiveProgress, make_progress
from poolguard.demo.render import PlainProgress
from poolguard.demo.scenarios import SCENARIOS


def test_not_a_terminal_gets_plain_lines() -> None:
    out = io.StringIO()
    progress = make_progress(list(SCENARIOS.values()), None, out)
    assert isinstance(progress, PlainProgress)
    with progress:
        progress(SCENARIOS["pg-restart"], "vanilla", "fault", {"ok": 5, "error": 2})
        progress(SCENARIOS["pg-restart"], "vanilla", "fault", {"ok": 6, "error": 2})
    (line,) = out.getvalue().splitlines()  # one line per phase change, not per tick
    assert "pg-restart" in line
    assert "error=2" in line


def test_live_view_shows_each_side_its_counts_and_the_current_fault() -> None:
    out = io.StringIO()
    scenario = SCENARIOS["pg-freeze"]
    with LiveProgress([scenario], 1.0, out) as live:
        live(scenario, "vanilla", "done", {"ok": 40, "error": 0, "ambiguous": 0})
        live(scenario, "poolguard", "fault", {"ok": 17, "error": 3, "ambiguous": 1})
    text = out.getvalue()
    assert "vanilla" in text
    assert "poolguard" in text
    assert "SIGSTOP" in text  # the current fault is named while it happens (may wrap)
    assert "17" in text
