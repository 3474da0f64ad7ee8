"""The live terminal view (``rich``, from the ``demo`` extra): one row per scenario and side.

Each row shows a progress bar over the side's expected run (warm-up + fault + cool-down), its
phase (the current fault is named while it happens) and running counts of ok / errors /
ambiguous. :func:`make_progress` falls back to :class:`~poolguard.demo.render.PlainProgress`
when stdout is not a terminal or ``rich`` is not installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from poolguard.demo.render import PlainProgress
from poolguard.demo.runner import COOLDOWN, WARMUP
from poolguard.demo.scenarios import Scenario

if TYPE_CHECKING:
    from rich.live import Live

__all__ = ["LiveProgress", "make_progress"]

BAR = 16


class LiveProgress:
    """A rich ``Live`` table redrawn on every progress tick (a few times a second)."""

    def __init__(self, scenarios: Sequence[Scenario], length: float | None, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._expected = {
            s.name: WARMUP + (length if length is not None else s.length) + COOLDOWN
            for s in scenarios
        }
        self._rows: dict[tuple[str, str], dict[str, Any]] = {
            (s.name, side): {"phase": "waiting", "counts": {}, "started": None}
            for s in scenarios
            for side in ("vanilla", "poolguard")
        }
        self._scenarios = {s.name: s for s in scenarios}
        self._live: Live = Live(
            self._table(), console=Console(file=out), refresh_per_second=8, transient=False
        )

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.__exit__(kind, exc, tb)

    def __call__(self, scenario: Scenario, side: str, phase: str, counts: dict[str, int]) -> None:
        row = self._rows[(scenario.name, side)]
        if row["started"] is None:
            row["started"] = time.monotonic()
        row["phase"], row["counts"] = phase, counts
        self._live.update(self._table())

    def _bar(self, name: str, row: dict[str, Any]) -> str:
        if row["started"] is None:
            done = 0.0
        elif row["phase"] == "done":
            done = 1.0
        else:
            done = min(1.0, (time.monotonic() - row["started"]) / self._expected[name])
        filled = int(done * BAR)
        return "█" * filled + "░" * (BAR - filled)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="poolguard demo: the same workload, the same fault")
        for column in ("scenario", "side", "progress", "phase", "ok", "errors", "ambiguous"):
            table.add_column(column, justify="right" if column in ("ok", "errors") else "left")
        for (name, side), row in self._rows.items():
            counts = row["counts"]
            phase = row["phase"]
            if phase == "fault":
                phase = f"[bold red]{self._scenarios[name].title}[/]"
            errors = counts.get("error", 0)
            table.add_row(
                name,
                side,
                self._bar(name, row),
                phase,
                str(counts.get("ok", 0)),
                f"[red]{errors}[/]" if errors else "0",
                str(counts.get("ambiguous", 0)),
            )
        return table


def make_progress(
    scenarios: Sequence[Scenario], length: float | None, out: TextIO = sys.stdout
) -> LiveProgress | PlainProgress:
    """The live view on a terminal with ``rich`` installed; plain lines otherwise."""
    if not out.isatty():
        return PlainProgress(out)
    try:
        return LiveProgress(scenarios, length, out)
    except ImportError:
        return PlainProgress(out)
