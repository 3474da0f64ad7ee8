"""The HTML report renders in a real browser (headless Chromium; scripts/setup.sh installs it).

The report is built from a synthetic run (no servers needed): what is checked here is that a
browser draws it — a screenshot with far more in it than a blank page's — and that the DOM it
parsed holds a chart per side with the fault window and the scoreboard.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from poolguard.demo.report import render_html
from poolguard.demo.runner import ScenarioRun, SideRun
from poolguard.demo.scenarios import SCENARIOS
from poolguard.demo.scoreboard import score
from poolguard.demo.workload import Request

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


def side(name: str, failing: bool) -> SideRun:
    requests = [
        Request("read", t / 10, 2.5 if failing and 10 <= t < 20 else 0.01, outcome, "E" * failing)
        for t in range(50)
        for outcome in ["error" if failing and 10 <= t < 20 else "ok"]
    ]
    return SideRun(name, requests, 1.0, 2.0, 8000, 8000, set(), {})


def screenshot(chromium: str, page: Path, out: Path) -> int:
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # CI containers run as root
            "--disable-gpu",
            "--window-size=1000,1200",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.stat().st_size


@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true", reason="chromium not installed"
)
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CI must have chromium (scripts/setup.sh installs it)"
    run = ScenarioRun(SCENARIOS["pg-restart"], 1.0)
    run.sides = {"vanilla": side("vanilla", True), "poolguard": side("poolguard", False)}
    page = tmp_path / "demo.html"
    page.write_text(render_html([run], [score(run)], "DATABASE_URL=***"), encoding="utf-8")
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")

    drawn = screenshot(CHROMIUM, page, tmp_path / "demo.png")
    empty = screenshot(CHROMIUM, blank, tmp_path / "blank.png")
    assert drawn > 5 * empty  # charts, text and tables, not a blank page

    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('class="timeline"') == 2
    assert dom.count('class="fault"') == 2
    assert 'class="scoreboard"' in dom
