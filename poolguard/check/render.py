"""The human-readable table of ``poolguard check``."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

__all__ = ["render_text"]

WIDTH = 100
LABEL = 11  # width of the left column ("server", "latency", ...)
GROUPS = (
    (
        "pool",
        (
            "pool_size",
            "max_overflow",
            "acquire_timeout",
            "max_lifetime",
            "max_idle",
            "validate_idle",
        ),
    ),
    (
        "retry",
        (
            "retry_attempts",
            "retry_backoff_initial",
            "retry_backoff_max",
            "retry_backoff_multiplier",
            "retry_jitter",
            "retry_timeout",
            "retry_budget",
        ),
    ),
    ("breaker", ("breaker_failures", "breaker_reset")),
    ("pgbouncer", ("pgbouncer",)),
)


def _yes_no(value: object) -> str:
    return {True: "on", False: "off", None: "unknown"}.get(value, str(value))  # type: ignore[call-overload, no-any-return]


def _accepted(value: object) -> str:
    return {True: "accepted", False: "REFUSED", None: "client"}.get(value, "?")  # type: ignore[call-overload, no-any-return]


def _row(label: str, text: str) -> list[str]:
    indent = " " * (2 + LABEL)
    wrapped = textwrap.wrap(text, WIDTH - len(indent), break_on_hyphens=False) or [""]
    return [f"  {label:<{LABEL}}{wrapped[0]}"] + [indent + line for line in wrapped[1:]]


def _timeouts(backend: dict[str, object]) -> list[str]:
    checks = backend.get("timeouts") or []
    assert isinstance(checks, list)
    if not checks:
        return []
    rows = [("SETTING", "VALUE", "ENFORCED AS", "SERVER")]
    for check in checks:
        server = _accepted(check["accepted"])
        if check["value"] == "off" and check["accepted"] is None:
            server = "-"
        rows.append((check["setting"], check["value"], check["applied_as"], server))
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    # Table rows are never wrapped: a wrapped column is harder to read than a long line.
    out = [f"  {'timeouts':<{LABEL}}{lines[0]}"]
    out += [" " * (2 + LABEL) + line for line in lines[1:]]
    for check in checks:
        if check.get("detail"):
            out += _row("", f"{check['setting']}: {check['detail']}")
    return out


def _backend(backend: dict[str, object]) -> list[str]:
    status = "OK" if backend["ok"] else "FAILED"
    lines = [f"{backend['target']}  {status}  {backend['url'] or '(no URL)'}"]
    if backend.get("error"):
        lines += _row("error", str(backend["error"]))
    if backend.get("server"):
        lines += _row("server", str(backend["server"]))
    if backend.get("latency_ms") is not None:
        samples = " ".join(f"{s:.3f}" for s in backend["latency_samples_ms"])  # type: ignore[attr-defined]
        lines += _row("latency", f"{backend['latency_ms']:.3f} ms median ({samples})")
    if backend.get("server"):
        lines += _row("tls", _yes_no(backend.get("tls")))
    lines += _timeouts(backend)
    pool = backend.get("pool") or {}
    assert isinstance(pool, dict)
    for label, keys in GROUPS:
        shown = [f"{k}={pool[k]}" for k in keys if k in pool]
        if shown and (label != "pgbouncer" or backend.get("kind") == "postgresql"):
            lines += _row(label, " ".join(shown))
    warnings = backend.get("warnings") or []
    assert isinstance(warnings, list)
    for index, warning in enumerate(warnings):
        lines += _row("warnings" if index == 0 else "", f"- {warning}")
    return lines


def render_text(result: dict[str, object]) -> str:
    """The whole check result as a table, one block per backend."""
    backends = result.get("backends") or []
    assert isinstance(backends, Sequence)
    failed = sum(1 for b in backends if not b["ok"])
    total = len(backends)
    verdict = "all OK" if not failed else f"{failed} of {total} FAILED"
    head = f"poolguard check: {total} backend{'s' if total != 1 else ''}, {verdict}"
    lines = [head]
    for note in result.get("notes") or []:  # type: ignore[attr-defined]
        lines.append(f"note: {note}")
    for backend in backends:
        lines += ["", *_backend(backend)]
    return "\n".join(lines) + "\n"
