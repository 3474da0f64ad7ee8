"""``--report FILE``: one self-contained HTML page (inline CSS and SVG; no script, no network).

Per scenario: the verdict, a timeline chart per side — each request a dot at (start time,
latency), green ok, red error, orange ambiguous, the fault window shaded, the deadline a dashed
line; both sides share the axes so they compare at a glance — and the scoreboard rows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from poolguard.demo.render import COLUMNS
from poolguard.demo.runner import ScenarioRun, SideRun

__all__ = ["render_html"]

WIDTH, HEIGHT = 460, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 10, 10, 30
COLORS = {"ok": "#2e7d32", "error": "#c62828", "hung": "#6a1b9a", "ambiguous": "#ef6c00"}

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}
h2{margin-top:2em;border-bottom:1px solid #ccc}
.charts{display:flex;gap:1em;flex-wrap:wrap}
figure{margin:0}
figcaption{font-weight:bold;text-align:center}
table.scoreboard{border-collapse:collapse;margin-top:.5em}
table.scoreboard td,table.scoreboard th{border:1px solid #ccc;padding:2px 8px;text-align:right}
.verdict{background:#f5f5f5;padding:.5em 1em;border-left:4px solid #1565c0}
.legend span{margin-right:1em}
"""


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    return out_lo + (value - lo) / (hi - lo or 1.0) * (out_hi - out_lo)


def _chart(side: SideRun, t_max: float, lat_max: float, deadline: float) -> str:
    def x(t: float) -> float:
        return _scale(t, 0.0, t_max, LEFT, WIDTH - RIGHT)

    def y(v: float) -> float:
        return _scale(v, 0.0, lat_max, HEIGHT - BOTTOM, TOP)

    parts = [
        f'<svg class="timeline" data-side="{side.side}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
        f'<rect class="fault" x="{x(side.fault_started):.1f}" y="{TOP}" '
        f'width="{x(side.fault_ended) - x(side.fault_started):.1f}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="#ffcdd2" opacity="0.6">'
        "<title>fault</title></rect>",
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
        'stroke="#555"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#555"/>',
    ]
    if deadline <= lat_max:
        parts.append(
            f'<line class="deadline" x1="{LEFT}" y1="{y(deadline):.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{y(deadline):.1f}" stroke="#1565c0" stroke-dasharray="4 3">'
            f"<title>deadline {deadline:g} s</title></line>"
        )
    for tick in (0.0, lat_max / 2, lat_max):
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{tick:.2f}s</text>"
        )
    for tick in range(int(t_max) + 1):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" '
            f'text-anchor="middle">{tick}</text>'
        )
    parts.append(
        f'<text x="{(LEFT + WIDTH) / 2:.0f}" y="{HEIGHT - 4}" font-size="10" '
        'text-anchor="middle">request start (s) → latency</text>'
    )
    # Failures drawn last so they stay visible over the many ok dots.
    order = {"ok": 0, "ambiguous": 1, "hung": 2, "error": 3}
    for r in sorted(side.requests, key=lambda r: order.get(r.outcome, 0)):
        parts.append(
            f'<circle class="{r.outcome}" cx="{x(r.t):.1f}" cy="{y(min(r.latency, lat_max)):.1f}" '
            f'r="{1.6 if r.outcome == "ok" else 2.6}" fill="{COLORS.get(r.outcome, "#000")}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(entry: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in COLUMNS)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt.format(row[key]))}</td>" for key, _, fmt in COLUMNS)
        + "</tr>"
        for row in entry["sides"].values()
    )
    return f'<table class="scoreboard"><tr>{head}</tr>{rows}</table>'


def _section(run: ScenarioRun, entry: dict[str, Any]) -> str:
    sides = list(run.sides.values())
    t_max = max((r.t + r.latency for s in sides for r in s.requests), default=1.0)
    lat_max = max(
        [r.latency for s in sides for r in s.requests] + [run.scenario.deadline * 1.1, 0.1]
    )
    charts = "".join(
        f"<figure><figcaption>{html.escape(s.side)}</figcaption>"
        f"{_chart(s, t_max, lat_max, run.scenario.deadline)}</figure>"
        for s in sides
    )
    return (
        f'<section class="scenario" id="{html.escape(run.scenario.name)}">'
        f"<h2>{html.escape(entry['title'])}</h2>"
        f"<p>{html.escape(entry['fault'])}; deadline {entry['deadline']:g} s.</p>"
        f'<p class="verdict">{html.escape(entry["verdict"])}</p>'
        f'<div class="charts">{charts}</div>{_table(entry)}</section>'
    )


def render_html(runs: Sequence[ScenarioRun], board: Sequence[dict[str, Any]], config: str) -> str:
    """The whole page; ``config`` is the (already redacted) configuration text."""
    legend = "".join(
        f'<span style="color:{color}">● {name}</span>' for name, color in COLORS.items()
    )
    sections = "".join(_section(run, entry) for run, entry in zip(runs, board, strict=True))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>poolguard demo</title><style>{CSS}</style></head><body>"
        "<h1>poolguard demo: vanilla vs poolguard, same workload, same fault</h1>"
        f"<pre>{html.escape(config)}</pre>"
        f'<p class="legend">{legend}<span style="background:#ffcdd2">fault window</span>'
        '<span style="color:#1565c0">- - deadline</span></p>'
        f"{sections}</body></html>\n"
    )
