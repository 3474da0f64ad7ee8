"""From what a side's run measured to the scoreboard's numbers, and one sentence per scenario.

Nothing here is assumed: every number and every word of the verdict comes from the requests
recorded and the database / Redis state after the run. When poolguard does worse on a measure,
the verdict says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from poolguard.demo.runner import ScenarioRun, SideRun

__all__ = ["LATENCY_GRACE", "score", "score_side", "verdict"]

#: A request counts as over its deadline only past this slack (thread scheduling, the error's
#: own unwinding): a deadline of 2 s ends requests at 2.00x s, which is the deadline kept.
LATENCY_GRACE = 0.25


def score_side(run: SideRun, deadline: float) -> dict[str, Any]:
    """The scoreboard row of one side."""
    reqs = run.requests
    failed = [r for r in reqs if r.outcome in ("error", "hung")]
    transfers = [r for r in reqs if r.kind == "transfer"]
    acked = {r.key for r in transfers if r.outcome == "ok"}
    refused = {r.key for r in transfers if r.outcome in ("error", "hung")}
    incrs = {r.key: r for r in reqs if r.kind == "incr"}
    values = run.incr_values
    max_latency = max((r.latency for r in reqs), default=0.0)
    return {
        "side": run.side,
        "requests": len(reqs),
        "ok": sum(r.outcome == "ok" for r in reqs),
        "errors": len(failed),
        "errors_by_kind": dict(Counter(f"{r.kind}:{r.error}" for r in failed)),
        "ambiguous": sum(r.outcome == "ambiguous" for r in reqs),
        # Lost COMMIT replies poolguard asked the server about (committed / aborted), instead
        # of surfacing "may have been applied".
        "ambiguous_resolved": sum(dict(run.stats.get("ambiguous_resolved") or {}).values()),
        "hung": sum(r.outcome == "hung" for r in reqs),
        "max_latency": round(max_latency, 3),
        "deadline": deadline,
        "over_deadline": sum(r.latency > deadline + LATENCY_GRACE for r in reqs),
        # An INCR the caller sent once and Redis applied more than once (a blind retry).
        "duplicates": sum(values.get(k, 0) > 1 for k in incrs),
        # ... or applied although the caller was told it failed (not "may have").
        "applied_but_failed": sum(
            values.get(k, 0) >= 1 for k, r in incrs.items() if r.outcome == "error"
        )
        + len(refused & run.stored_transfers),
        "acked_missing": len(acked - run.stored_transfers),
        "money_conserved": run.total_money == run.expected_money,
        "total_money": run.total_money,
        "expected_money": run.expected_money,
        "fault_window": [round(run.fault_started, 3), round(run.fault_ended, 3)],
    }


def score(run: ScenarioRun) -> dict[str, Any]:
    """The scenario's scoreboard entry: both sides' rows and the verdict."""
    sides = {name: score_side(s, run.scenario.deadline) for name, s in run.sides.items()}
    return {
        "scenario": run.scenario.name,
        "title": run.scenario.title,
        "fault": run.scenario.describe(run.length),
        "fault_length": run.length,
        "deadline": run.scenario.deadline,
        "sides": sides,
        "verdict": verdict(run.scenario.title, sides["vanilla"], sides["poolguard"]),
    }


def _summary(row: dict[str, Any]) -> str:
    parts = [f"{row['errors']} error{'s' if row['errors'] != 1 else ''} surfaced"]
    if row["ambiguous"]:
        parts.append(f"{row['ambiguous']} reported as may-have-been-applied")
    if row["ambiguous_resolved"]:
        n = row["ambiguous_resolved"]
        parts.append(
            f"{n} lost COMMIT repl{'ies' if n != 1 else 'y'} resolved by asking the server"
        )
    if row["duplicates"]:
        parts.append(
            f"{row['duplicates']} INCR{'s' if row['duplicates'] != 1 else ''} applied twice"
        )
    if row["applied_but_failed"]:
        parts.append(f"{row['applied_but_failed']} applied although reported failed")
    if not row["money_conserved"]:
        parts.append("money NOT conserved")
    parts.append(f"slowest {row['max_latency']:.1f} s")
    return ", ".join(parts)


#: (measure, label): lower is better for each.
_MEASURES = (
    ("errors", "errors surfaced"),
    ("duplicates", "duplicates applied"),
    ("applied_but_failed", "applied-but-reported-failed"),
    ("acked_missing", "acknowledged-but-missing"),
    ("over_deadline", "requests over the deadline"),
)


def verdict(title: str, vanilla: dict[str, Any], guarded: dict[str, Any]) -> str:
    """One sentence: what each side saw, and where poolguard did better or worse."""
    better = [label for key, label in _MEASURES if guarded[key] < vanilla[key]]
    worse = [label for key, label in _MEASURES if guarded[key] > vanilla[key]]
    if vanilla["money_conserved"] and not guarded["money_conserved"]:
        worse.append("money conservation")
    if guarded["money_conserved"] and not vanilla["money_conserved"]:
        better.append("money conservation")
    text = f"{title}: vanilla {_summary(vanilla)}; poolguard {_summary(guarded)}."
    if worse:
        text += f" poolguard did WORSE on {', '.join(worse)}"
        text += f" (better on {', '.join(better)})." if better else "."
    elif better:
        text += f" poolguard did better on {', '.join(better)}."
    else:
        text += " No difference."
    return text
