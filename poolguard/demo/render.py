"""The demo's text output: the configuration (redacted), progress lines and the scoreboard."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from poolguard.demo.scenarios import Scenario

__all__ = ["PlainProgress", "render_config", "render_scoreboard"]


def render_config(config: dict[str, str], urls: dict[str, str]) -> str:
    """The env-style configuration both sides get (URLs redacted: no password printed)."""
    from poolguard.config.urls import redact

    lines = ["poolguard side: poolguard.create_engine(), poolguard.redis.from_url() with"]
    lines += [f"  {name}={redact(url)}" for name, url in urls.items()]
    lines += [f"  {name}={value}" for name, value in config.items()]
    lines.append(
        "vanilla side: sqlalchemy.create_engine(url, pool_pre_ping=True), "
        "redis.Redis(host=..., socket_timeout=0.25) with redis-py's default retry"
    )
    return "\n".join(lines) + "\n"


class PlainProgress:
    """One line per phase change (for logs and pipes: no cursor tricks)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._last: tuple[str, str, str] | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, scenario: Scenario, side: str, phase: str, counts: dict[str, int]) -> None:
        key = (scenario.name, side, phase)
        if key == self._last:
            return
        self._last = key
        seen = " ".join(f"{k}={v}" for k, v in counts.items())
        self.out.write(
            f"[{time.monotonic() - self._t0:6.1f}s] {scenario.name:<12} {side:<9} "
            f"{phase:<8} {seen}\n"
        )
        self.out.flush()


COLUMNS = (
    ("side", "side", "{}"),
    ("requests", "requests", "{}"),
    ("errors", "errors", "{}"),
    ("ambiguous", "ambiguous", "{}"),
    ("ambiguous_resolved", "resolved", "{}"),
    ("max_latency", "max lat (s)", "{:.2f}"),
    ("over_deadline", ">deadline", "{}"),
    ("duplicates", "dup applied", "{}"),
    ("applied_but_failed", "applied+failed", "{}"),
    ("money_conserved", "money ok", "{}"),
)


def render_scoreboard(board: list[dict[str, Any]]) -> str:
    out: list[str] = []
    header = [label for _, label, _ in COLUMNS]
    for entry in board:
        rows = [
            [fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in entry["sides"].values()
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        out.append(
            f"== {entry['title']} ({entry['scenario']}): {entry['fault']}; "
            f"deadline {entry['deadline']:g} s"
        )
        lines = [header, *rows]
        out += [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        out.append(entry["verdict"])
        out.append("")
    return "\n".join(out)
