"""The ``poolguard demo`` subcommand: options, servers, run, scoreboard (text or JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["add_parser", "run"]

#: Server kind -> its option. Explicit options only: the app's DATABASE_URL is not read, so the
#: demo never creates tables or kills sessions on a server nobody named for it.
OWN_FLAGS = {"postgres": "--pg-url", "mysql": "--mysql-url", "redis": "--redis-url"}


def add_parser(commands: Any) -> None:
    from poolguard.demo.scenarios import SCENARIOS

    demo = commands.add_parser(
        "demo",
        help="run faults side by side: vanilla SQLAlchemy/redis-py vs poolguard",
        description="Starts local PostgreSQL, MariaDB and Redis (poolguard.testing; or uses "
        "yours: --pg-url/--mysql-url/--redis-url) and runs each "
        "scenario twice on the same fault: plain SQLAlchemy (pool_pre_ping) + redis-py, then "
        "poolguard. Prints a scoreboard measured in this run. Scenarios: " + ", ".join(SCENARIOS),
    )
    demo.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="length of each fault (default: each scenario's own, 1.5-3 s)",
    )
    for kind, flag in OWN_FLAGS.items():
        demo.add_argument(
            flag,
            default=None,
            metavar="URL",
            help=f"use your own {kind} server instead of an embedded one (a scratch database: "
            "the demo creates and drops demo_account/demo_transfer; restart and freeze "
            "scenarios are refused)",
        )
    demo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    demo.add_argument("--json", action="store_true", help="print the scoreboard as JSON")
    demo.add_argument(
        "--report",
        metavar="FILE",
        default=None,
        help="also write a self-contained HTML report (timelines per scenario, scoreboard)",
    )


def run(args: argparse.Namespace) -> int:
    from poolguard.demo.live import make_progress
    from poolguard.demo.render import render_config, render_scoreboard
    from poolguard.demo.report import render_html
    from poolguard.demo.runner import CONFIG, ScenarioRun, run_scenarios, servers
    from poolguard.demo.scenarios import SCENARIOS
    from poolguard.demo.scoreboard import score

    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<12} {s.describe()} (deadline {s.deadline:g} s)")
        return 0
    if args.duration is not None and args.duration <= 0:
        print("poolguard demo: --duration must be more than 0", file=sys.stderr)
        return 2
    # poolguard logs breaker transitions at WARNING; the scoreboard tells the story here.
    logging.getLogger("poolguard").addHandler(logging.NullHandler())
    chosen = [SCENARIOS[n] for n in dict.fromkeys(args.scenario)] or list(SCENARIOS.values())
    own = {kind: url for kind, flag in OWN_FLAGS.items() if (url := getattr(args, _dest(flag)))}
    refused = _refusals(chosen, own)
    if refused:
        for line in refused:
            print(f"poolguard demo: refused: {line}", file=sys.stderr)
        print(
            "poolguard demo: pick other scenarios with --scenario (--list names them)",
            file=sys.stderr,
        )
        return 2
    # Progress goes to stderr under --json so stdout stays one JSON document.
    progress_out = sys.stderr if args.json else sys.stdout
    board: list[dict[str, Any]] = []
    runs: list[ScenarioRun] = []
    try:
        with servers(own) as srv:
            urls = {
                "DATABASE_URL": srv.postgres.url,
                "MYSQL_URL": srv.mysql.url,
                "REDIS_URL": srv.redis.url,
            }
            config = render_config(CONFIG, urls)
            progress_out.write(config)
            with make_progress(chosen, args.duration, progress_out) as progress:
                for scenario_run in run_scenarios(
                    chosen, srv, length=args.duration, progress=progress
                ):
                    runs.append(scenario_run)
                    board.append(score(scenario_run))
    except KeyboardInterrupt:
        print("poolguard demo: interrupted; servers stopped", file=sys.stderr)
        return 130
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(render_html(runs, board, config))
        progress_out.write(f"report written to {args.report}\n")
    if args.json:
        print(json.dumps({"scenarios": board}, indent=2))
    else:
        sys.stdout.write("\n" + render_scoreboard(board))
    return 0


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _refusals(chosen: list[Any], own: dict[str, str]) -> list[str]:
    """One line per chosen scenario that cannot run on the given servers (none: no own server)."""
    if not own:
        return []
    from poolguard.demo.own import refusal

    found = (refusal(s.name, s.needs_process, own) for s in chosen)
    return [line for line in found if line]
