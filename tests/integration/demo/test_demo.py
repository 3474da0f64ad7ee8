"""``poolguard demo``: a short run of each scenario on real servers with real faults.

The assertions are the invariants the scoreboard reports, so a regression in poolguard fails
here and shows up as a lost row in the demo. The vanilla facts asserted (a restart surfaces
errors, a stalled INCR is applied twice by redis-py's default retry, a freeze holds requests
past the deadline) were measured first; they are what plain SQLAlchemy/redis-py really do.
"""

from __future__ import annotations

import html
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from poolguard.cli import main
from poolguard.demo.runner import run_scenarios, servers
from poolguard.demo.scenarios import SCENARIOS, Servers
from poolguard.demo.scoreboard import score, verdict

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.mysql,
    pytest.mark.redis,
    pytest.mark.chaos,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def srv() -> Iterator[Servers]:
    with servers() as started:
        yield started


def run_one(srv: Servers, name: str, length: float) -> dict[str, Any]:
    (scenario_run,) = run_scenarios([SCENARIOS[name]], srv, length=length)
    entry = score(scenario_run)
    print(entry["verdict"])
    return entry


def kind_errors(row: dict[str, Any], kind: str) -> int:
    return sum(n for k, n in row["errors_by_kind"].items() if k.startswith(f"{kind}:"))


def assert_ledger_holds(row: dict[str, Any]) -> None:
    assert row["money_conserved"], row
    assert row["acked_missing"] == 0
    assert row["applied_but_failed"] == 0


def test_pg_restart_vanilla_surfaces_errors_poolguard_none(srv: Servers) -> None:
    entry = run_one(srv, "pg-restart", 1.0)
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    assert kind_errors(vanilla, "read") > 0
    assert guarded["errors"] == 0, guarded["errors_by_kind"]
    assert guarded["ok"] > 0
    assert guarded["over_deadline"] == 0
    assert_ledger_holds(guarded)
    assert vanilla["money_conserved"]
    assert "poolguard did better on errors surfaced" in entry["verdict"]


@pytest.mark.parametrize("name", ["pg-freeze", "net-blackhole"])
def test_freeze_and_blackhole_poolguard_keeps_the_deadline_vanilla_does_not(
    srv: Servers, name: str
) -> None:
    deadline = SCENARIOS[name].deadline
    entry = run_one(srv, name, deadline + 1.0)
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    assert vanilla["over_deadline"] > 0
    assert vanilla["max_latency"] > deadline
    assert guarded["over_deadline"] == 0
    assert guarded["hung"] == 0
    assert_ledger_holds(guarded)


def test_kill_storm_poolguard_reads_never_fail_and_money_is_conserved(srv: Servers) -> None:
    entry = run_one(srv, "pg-kills", 1.5)
    guarded = entry["sides"]["poolguard"]
    assert kind_errors(guarded, "read") == 0, guarded["errors_by_kind"]
    assert guarded["ok"] > 0
    assert_ledger_holds(guarded)
    assert entry["sides"]["vanilla"]["money_conserved"]


def test_lost_commit_vanilla_reports_applied_transfers_as_failed_poolguard_resolves(
    srv: Servers,
) -> None:
    entry = run_one(srv, "lost-commit", 2.0)
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    assert vanilla["applied_but_failed"] > 0  # the caller was told "failed"; it was committed
    assert guarded["ambiguous_resolved"] > 0
    assert kind_errors(guarded, "transfer") == 0, guarded["errors_by_kind"]
    assert guarded["ambiguous"] == 0
    assert_ledger_holds(guarded)
    assert vanilla["money_conserved"]


def test_mysql_idle_pre_ping_saves_checkouts_not_a_transaction_held_across_the_gap(
    srv: Servers,
) -> None:
    # Measured: after the lull, pool_pre_ping and poolguard's idle validation both replace the
    # connections wait_timeout closed (no read fails on either side); the transfer held open
    # across the lull fails on vanilla (2006 gone away) and is re-run by run_transaction.
    entry = run_one(srv, "mysql-idle", 1.5)
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    assert kind_errors(vanilla, "read") == 0, vanilla["errors_by_kind"]
    assert kind_errors(vanilla, "transfer") >= 1, vanilla["errors_by_kind"]
    assert guarded["errors"] == 0, guarded["errors_by_kind"]
    assert guarded["ok"] > 0
    assert guarded["over_deadline"] == 0
    assert_ledger_holds(guarded)
    assert vanilla["money_conserved"]
    assert "poolguard did better on errors surfaced" in entry["verdict"]


def test_cli_redis_stall_json_incr_applied_once_vs_twice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Through the CLI, so the subcommand, its JSON, its report and its redaction are covered.
    report = tmp_path / "demo.html"
    argv = ["demo", "--scenario", "redis-stall", "--duration", "1", "--json"]
    assert main([*argv, "--report", str(report)]) == 0
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)["scenarios"]
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    assert vanilla["duplicates"] > 0  # redis-py's default Retry sent the timed-out INCR again
    assert guarded["duplicates"] == 0
    assert guarded["applied_but_failed"] == 0
    assert "DATABASE_URL=postgresql://app:***@" in captured.err
    assert not re.search(r"://[^:/@\s]*:(?!\*\*\*@)[^@\s]+@", captured.out + captured.err)
    assert_report_structure(report.read_text(encoding="utf-8"), entry)


class Page(HTMLParser):
    """The report's elements that matter: sections, charts and what they hold, external refs."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(t == tag and (cls is None or a.get("class") == cls) for t, a in self.tags)


def assert_report_structure(page_text: str, entry: dict[str, Any]) -> None:
    page = Page()
    page.feed(page_text)
    assert page.count("section", "scenario") == 1
    assert page.count("svg", "timeline") == 2  # one chart per side
    assert page.count("rect", "fault") == 2  # the fault window shaded on each
    assert page.count("line", "deadline") == 2
    requests = sum(row["requests"] for row in entry["sides"].values())
    assert page.count("circle") == requests  # every request drawn
    assert page.count("circle", "ambiguous") == entry["sides"]["poolguard"]["ambiguous"]
    assert page.count("table", "scoreboard") == 1
    assert page.count("tr") == 3  # header + vanilla + poolguard
    assert entry["verdict"] in html.unescape(page_text)
    # Self-contained: nothing fetched when opened (no script, stylesheet or image by URL).
    assert page.count("script") == 0
    assert not [a for _, a in page.tags if a.get("src") or a.get("href")]
    assert "***" in page_text  # the configuration shown, redacted


def test_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(SCENARIOS)


def row(**changes: Any) -> dict[str, Any]:
    base = {
        "errors": 0,
        "ambiguous": 0,
        "ambiguous_resolved": 0,
        "duplicates": 0,
        "applied_but_failed": 0,
        "acked_missing": 0,
        "over_deadline": 0,
        "money_conserved": True,
        "max_latency": 0.1,
    }
    return {**base, **changes}


def test_verdict_says_when_poolguard_loses() -> None:
    text = verdict("X", row(over_deadline=3), row(errors=4))
    assert "poolguard did WORSE on errors surfaced" in text
    assert "better on requests over the deadline" in text
    assert "No difference" in verdict("X", row(), row())
    assert "money conservation" in verdict("X", row(), row(money_conserved=False))


def test_ctrl_c_during_a_fault_stops_the_servers_and_exits_130() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolguard", "demo", "--scenario", "pg-freeze"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:  # plain lines: stdout is a pipe
        lines.append(line)
        if " fault " in line:  # PostgreSQL is SIGSTOPped now
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted; servers stopped" in output
    port = int(re.findall(r"DATABASE_URL=\S+:(\d+)/", output)[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens there any more: the (frozen) server was stopped


def no_password(text: str) -> bool:
    return not re.search(r"://[^:/@\s]*:(?!\*\*\*@)[^@\s]+@", text)


def own_server_flags(srv: Servers) -> list[str]:
    # The embedded servers' URLs passed as if they were the user's own servers.
    return [
        *("--pg-url", srv.postgres.url),
        *("--mysql-url", srv.mysql.url),
        *("--redis-url", srv.redis.url),
    ]


def test_own_servers_refuse_process_scenarios_by_name(
    srv: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--scenario", "pg-restart", "--scenario", "pg-freeze", "--scenario"]
    # The embedded MariaDB's app login may not SET GLOBAL: the probe turns mysql-idle away.
    assert main([*argv, "mysql-idle", *own_server_flags(srv)]) == 2
    err = capsys.readouterr().err
    assert "refused: pg-restart" in err
    assert "refused: pg-freeze" in err
    assert "refused: mysql-idle: your server refused the fault (OperationalError)" in err
    assert no_password(err)


def test_own_servers_kill_storm_through_sql(
    srv: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--scenario", "pg-kills", "--duration", "1.5", "--json"]
    assert main([*argv, *own_server_flags(srv)]) == 0
    captured = capsys.readouterr()
    (entry,) = json.loads(captured.out)["scenarios"]
    vanilla, guarded = entry["sides"]["vanilla"], entry["sides"]["poolguard"]
    print(entry["verdict"])
    assert vanilla["errors"] > 0  # the storm reached the "user's" server through SQL
    assert kind_errors(guarded, "read") == 0, guarded["errors_by_kind"]
    assert_ledger_holds(guarded)
    assert "DATABASE_URL=postgresql://app:***@" in captured.err
    assert no_password(captured.out + captured.err)
