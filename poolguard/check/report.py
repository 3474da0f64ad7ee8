"""What a probe found about one backend: plain data, rendered as a table or JSON by the CLI.

:class:`BackendReport` (one per backend) holds :class:`TimeoutCheck` rows and warnings; the
helpers every probe shares are :func:`measure_latency`, :func:`scrub` (passwords out of every
string) and the TLS and idle-kill warnings. Probes: ``postgres.py``, ``mysql.py``, ``redis.py``;
the table: ``render.py``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from poolguard.config import Settings, redact
from poolguard.config.parse import format_duration

__all__ = ["BackendReport", "TimeoutCheck", "is_loopback", "measure_latency", "scrub"]

#: Round trips timed for the latency figure; the median ignores one slow outlier.
LATENCY_SAMPLES = 5
#: Server-side idle kills shorter than max_idle + this margin surprise the pool (seconds).
IDLE_MARGIN = 5.0


@dataclass
class TimeoutCheck:
    """One timeout: its configured value, how it is enforced, and the server's answer."""

    setting: str
    value: str
    applied_as: str
    accepted: bool | None = None
    """True/False: the server accepted/refused it; None: client-side only, or off."""
    detail: str | None = None


@dataclass
class BackendReport:
    """The outcome of checking one configured backend."""

    target: str
    backend: str
    url: str
    name: str | None = None
    kind: str = ""
    ok: bool = False
    error: str | None = None
    server: str | None = None
    latency_ms: float | None = None
    latency_samples_ms: list[float] = field(default_factory=list)
    tls: bool | None = None
    timeouts: list[TimeoutCheck] = field(default_factory=list)
    pool: dict[str, object] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, target: str, settings: Settings, kind: str) -> BackendReport:
        """An empty report for ``settings``, with the pool settings filled in."""
        shown = settings.describe()
        pool = {k: v for k, v in shown.items() if k not in {"url", "name", "backend"}}
        return cls(
            target=target,
            backend=settings.backend,
            url=settings.redacted_url() or "",
            name=settings.name,
            kind=kind,
            pool=pool,
            warnings=list(settings.warnings()),
        )

    def timeout(
        self, setting: str, seconds: float | None, applied_as: str, accepted: bool | None = None
    ) -> TimeoutCheck:
        """Record one timeout line and return it (to set ``accepted``/``detail`` later)."""
        check = TimeoutCheck(setting, format_duration(seconds), applied_as, accepted)
        self.timeouts.append(check)
        return check

    def fail(self, exc: BaseException) -> None:
        """Mark the backend failed with ``exc`` (message redacted)."""
        self.ok = False
        self.error = redact(f"{type(exc).__name__}: {exc}".strip())

    def to_dict(self, secrets: Iterable[str] = ()) -> dict[str, object]:
        """JSON-ready, with every secret scrubbed from every string."""
        scrubbed = scrub(dataclasses.asdict(self), secrets)
        assert isinstance(scrubbed, dict)
        return scrubbed


def scrub(value: object, secrets: Iterable[str]) -> object:
    """``value`` with each secret replaced by ``***`` in every string, recursively.

    Defense in depth: redact() already hides URL passwords, but a driver message could quote a
    password in a form redact() does not recognize.
    """
    hidden = [s for s in secrets if s]
    if not hidden:
        return value
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, hidden) for v in value]
    return value


def measure_latency(report: BackendReport, round_trip: Callable[[], object]) -> None:
    """Time ``LATENCY_SAMPLES`` round trips; store the samples and their median in ms."""
    samples = []
    for _ in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        round_trip()
        samples.append((time.perf_counter() - started) * 1000.0)
    report.latency_samples_ms = [round(s, 3) for s in samples]
    report.latency_ms = round(statistics.median(samples), 3)


def is_loopback(host: str | None) -> bool:
    """True for a unix socket, ``localhost`` or a loopback address (no TLS needed there)."""
    if not host or host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_tls(report: BackendReport, host: str | None) -> None:
    """The standard warning when traffic to a remote host is not encrypted."""
    if report.tls is False and not is_loopback(host):
        report.warnings.append(
            f"TLS is off to the non-loopback host {host}: credentials and data cross the "
            "network in clear text (PostgreSQL: sslmode=require; MySQL: ssl_ca=...; rediss://)"
        )


def warn_server_idle_kill(
    report: BackendReport, settings: Settings, variable: str, seconds: float
) -> None:
    """Warn when the server drops idle connections before the pool would retire them, or
    before keepalive (``POOLGUARD_KEEPALIVE``) pings them."""
    if seconds <= 0:
        return
    keepalive = settings.keepalive
    if keepalive is not None and keepalive < seconds:
        return  # each idle connection is pinged before the server's limit: kept, not killed
    if keepalive is not None:
        report.warnings.append(
            f"the server closes connections idle for {format_duration(seconds)} ({variable}) "
            f"but POOLGUARD_KEEPALIVE is {format_duration(keepalive)}: connections will be "
            "found dead by the keepalive ping (and replaced) rather than kept alive; set "
            f"POOLGUARD_KEEPALIVE below {format_duration(seconds)}"
        )
    if settings.max_idle is None or settings.max_idle + IDLE_MARGIN > seconds:
        report.warnings.append(
            f"the server closes connections idle for {format_duration(seconds)} ({variable}) "
            f"but max_idle is {format_duration(settings.max_idle)}: set POOLGUARD_MAX_IDLE "
            f"below {format_duration(seconds)} so the pool retires them first"
        )
