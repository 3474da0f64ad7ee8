"""The human-readable table of ``poolguard check`` (input: the JSON-ready result dict).

:func:`render_text` draws one block per backend from ``report.BackendReport.to_dict()`` output;
``poolguard/cli.py`` prints it, or the dict itself as JSON with ``--json``.
"""

from __future__ import annotations

import textwrap
from typing import Any

__all__ = ["render_text"]

WIDTH = 100
LABEL = 11  # width of the left column ("server", "latency", ...)
INDENT = " " * (2 + LABEL)
POOL = ("pool_size", "max_overflow", "acquire_timeout", "max_lifetime", "max_idle")
RETRY = ("retry_attempts", "retry_backoff_initial", "retry_backoff_max")
RETRY_MORE = ("retry_backoff_multiplier", "retry_jitter", "retry_timeout", "retry_budget")
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pool", (*POOL, "validate_idle")),
    ("retry", (*RETRY, *RETRY_MORE)),
    ("breaker", ("breaker_failures", "breaker_reset")),
    ("pgbouncer", ("pgbouncer",)),
)
SERVER_ANSWER = {True: "accepted", False: "REFUSED", None: "client"}
TLS = {True: "on", False: "off", None: "unknown"}


def _row(label: str, text: str) -> list[str]:
    wrapped = textwrap.wrap(text, WIDTH - len(INDENT), break_on_hyphens=False) or [""]
    return [f"  {label:<{LABEL}}{wrapped[0]}"] + [INDENT + line for line in wrapped[1:]]


def _timeouts(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    rows = [("SETTING", "VALUE", "ENFORCED AS", "SERVER")]
    for check in checks:
        off = check["value"] == "off" and check["accepted"] is None
        answer = "-" if off else SERVER_ANSWER.get(check["accepted"], "?")
        rows.append((check["setting"], check["value"], check["applied_as"], answer))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    # Table rows are never wrapped: a wrapped column is harder to read than a long line.
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    out = [f"  {'timeouts':<{LABEL}}{lines[0]}"] + [INDENT + line for line in lines[1:]]
    for check in checks:
        if check.get("detail"):
            out += _row("", f"{check['setting']}: {check['detail']}")
    return out


def _backend(backend: dict[str, Any]) -> list[str]:
    status = "OK" if backend["ok"] else "FAILED"
    lines = [f"{backend['target']}  {status}  {backend['url'] or '(no URL)'}"]
    if backend.get("error"):
        lines += _row("error", backend["error"])
    if backend.get("server"):
        lines += _row("server", backend["server"])
    if backend.get("latency_ms") is not None:
        samples = " ".join(f"{s:.3f}" for s in backend["latency_samples_ms"])
        lines += _row("latency", f"{backend['latency_ms']:.3f} ms median ({samples})")
    if backend.get("server"):
        lines += _row("tls", TLS.get(backend.get("tls"), "?"))
    lines += _timeouts(backend.get("timeouts") or [])
    pool = backend.get("pool") or {}
    for label, keys in GROUPS:
        shown = [f"{k}={pool[k]}" for k in keys if k in pool]
        if shown and (label != "pgbouncer" or backend.get("kind") == "postgresql"):
            lines += _row(label, " ".join(shown))
    for index, warning in enumerate(backend.get("warnings") or []):
        lines += _row("warnings" if index == 0 else "", f"- {warning}")
    return lines


def render_text(result: dict[str, Any]) -> str:
    """The whole check result as a table, one block per backend."""
    backends: list[dict[str, Any]] = result.get("backends") or []
    failed = sum(1 for b in backends if not b["ok"])
    total = len(backends)
    verdict = "all OK" if not failed else f"{failed} of {total} FAILED"
    if not total:
        verdict = "nothing checked"
    lines = [f"poolguard check: {total} backend{'s' if total != 1 else ''}, {verdict}"]
    lines += [f"note: {note}" for note in result.get("notes") or []]
    for backend in backends:
        lines += ["", *_backend(backend)]
    return "\n".join(lines) + "\n"
