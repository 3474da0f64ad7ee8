"""PostgreSQL knowledge: tables and small functions, no pooling (psycopg 3, sync and async).

- :func:`classify`: SQLSTATE / psycopg state → :class:`Classification` (the retry-safety input);
- :func:`connect_params`: TCP keepalives, ``tcp_user_timeout``, libpq ``connect_timeout`` and the
  startup ``options`` carrying server-side timeouts;
- :func:`session_setup_sql` / :func:`local_timeouts_sql`: timeouts that cannot go in the startup
  packet (version-gated GUCs; PgBouncer transaction pooling, where only ``SET LOCAL`` is safe);
- :func:`connect` / :func:`connect_async`: psycopg connects bounded by a *client* deadline, since
  libpq's ``connect_timeout`` is whole seconds with a 2 s minimum;
- :func:`ping` / :func:`ping_async`, :func:`needs_reset`: cheap validation and reset decisions;
- :func:`send_rollback` / :func:`rollback_pending` / :func:`rollback_settled`: a ROLLBACK sent
  without waiting for its reply, whose reply is read when the connection is next taken;
- :class:`FirstStatementCursor` / :class:`AsyncFirstStatementCursor`: a transaction's BEGIN
  sent with its first statement (one round trip);
- :func:`is_idempotent`: may this statement run twice? (a conservative parse, see ``sql.py``).

Nothing here imports SQLAlchemy: ``integrations/sqlalchemy/_backend.py`` (``PostgresBackend``)
and the native pools of ``integrations/psycopg_pool/`` both build on it (their connections
derive from :class:`DeadlineConnection`); ``core/disposition.py`` decides what a
Classification allows.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import sys
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg
import psycopg.conninfo
from psycopg import errors as pg_errors
from psycopg import generators
from psycopg.pq import ExecStatus, TransactionStatus

from poolguard.backends.pgbouncer import PGBOUNCER_SQLSTATE, classify_pgbouncer
from poolguard.backends.sql import SqlRules, is_read_statement
from poolguard.core.deadline import remaining
from poolguard.core.disposition import Classification, Disposition, Scope

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

if TYPE_CHECKING:
    from poolguard.config.settings import Settings

__all__ = [
    "BEFORE_SEND_SQLSTATES",
    "CLIENT_CONNECTION_CHECK_INTERVAL",
    "DISCONNECT_SQLSTATES",
    "PG_RULES",
    "PING_SQL",
    "RETRY_TRANSACTION_SQLSTATES",
    "TIMEOUT_SQLSTATES",
    "AsyncFirstStatementCursor",
    "DeadlineAsyncConnection",
    "DeadlineConnection",
    "FirstStatementCursor",
    "classify",
    "connect",
    "connect_async",
    "connect_deadline",
    "connect_params",
    "driver_error",
    "is_idempotent",
    "local_timeouts_sql",
    "needs_reset",
    "ping",
    "ping_async",
    "rollback_deferrable",
    "rollback_pending",
    "rollback_reply_ready",
    "rollback_settled",
    "send_rollback",
    "server_timeouts",
    "session_setup_sql",
    "sqlstate",
    "startup_options",
    "uses_pgbouncer",
    "wrong_role",
]

# --- classification tables ------------------------------------------------------------------

#: The server rolled the whole transaction back: re-run the unit of work (``run_transaction``).
#: 55P03 (lock_not_available, from ``lock_timeout`` or NOWAIT) aborts the transaction too.
RETRY_TRANSACTION_SQLSTATES: Mapping[str, str] = {
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "55P03": "lock_not_available",
}

#: Refused before any statement ran: safe to retry anything (connect phase, breaker-counted).
#: 57P03 is "the database system is starting up / shutting down / in recovery".
BEFORE_SEND_SQLSTATES: Mapping[str, tuple[str, Scope]] = {
    "57P03": ("cannot_connect_now", Scope.POOL),
    "53300": ("too_many_connections", Scope.NONE),
    "08001": ("connect_failed", Scope.NONE),
    "08004": ("connection_rejected", Scope.NONE),
}

#: The session is gone; whatever was in flight may have run (unless it was before send).
#: 57P01 is also what pg_terminate_backend() sends. 25006 (read-only transaction) means we
#: reached a standby after a failover: the statement was rejected, so it is before-send, and
#: every older connection may point at the demoted primary.
DISCONNECT_SQLSTATES: Mapping[str, tuple[str, Disposition, Scope]] = {
    "57P01": ("admin_shutdown", Disposition.RETRY_IF_IDEMPOTENT, Scope.POOL),
    "57P02": ("crash_shutdown", Disposition.RETRY_IF_IDEMPOTENT, Scope.POOL),
    "25P03": ("idle_in_transaction_timeout", Disposition.RETRY_IF_IDEMPOTENT, Scope.CONNECTION),
    "25006": ("read_only_transaction", Disposition.RETRY, Scope.POOL),
    "08003": ("connection_does_not_exist", Disposition.RETRY_IF_IDEMPOTENT, Scope.CONNECTION),
    "08006": ("connection_failure", Disposition.RETRY_IF_IDEMPOTENT, Scope.CONNECTION),
    "08007": ("transaction_resolution_unknown", Disposition.AMBIGUOUS, Scope.CONNECTION),
    "08P01": ("protocol_violation", Disposition.RETRY_IF_IDEMPOTENT, Scope.CONNECTION),
    "57P05": ("idle_session_timeout", Disposition.RETRY_IF_IDEMPOTENT, Scope.CONNECTION),
}

#: Timeouts fired by the server: final (retrying a statement that timed out doubles the load).
TIMEOUT_SQLSTATES: Mapping[str, str] = {
    "57014": "statement_timeout",  # query_canceled: statement_timeout or a cancel request
}

# Connect-time FATALs reach psycopg as text only (no SQLSTATE). Permanent ones must not be
# retried (a wrong password would count towards the breaker and waste the deadline); the
# transient ones get the reason their SQLSTATE would have given. Server messages in English
# (lc_messages=C/en): a translated server falls back to the generic "connect_failed" retry.
_PERMANENT_CONNECT_MESSAGES = (
    ("password authentication failed", "auth_failed"),
    ("authentication failed", "auth_failed"),
    ("no pg_hba.conf entry", "hba_rejected"),
    ("does not exist", "unknown_role_or_database"),
    ("permission denied", "permission_denied"),
    ("server does not support ssl", "ssl_unsupported"),
    ("certificate", "ssl_certificate"),
)
_TRANSIENT_CONNECT_MESSAGES = (
    ("the database system is starting up", "cannot_connect_now", Scope.POOL),
    ("the database system is shutting down", "cannot_connect_now", Scope.POOL),
    ("the database system is in recovery mode", "cannot_connect_now", Scope.POOL),
    ("the database system is not yet accepting connections", "cannot_connect_now", Scope.POOL),
    ("too many clients", "too_many_connections", Scope.NONE),
    ("remaining connection slots are reserved", "too_many_connections", Scope.NONE),
)

# psycopg messages without a SQLSTATE (libpq client-side errors). "sending query failed" means
# libpq could not write the request, so the server never saw a complete message.
_BEFORE_SEND_MESSAGES = (
    ("sending query", "send_failed"),
    ("connection failed", "connect_failed"),
    ("connection timeout expired", "connect_timeout"),
    ("could not connect", "connect_failed"),
    ("connection refused", "connect_refused"),
    ("could not translate host name", "dns_failed"),
    ("the connection is closed", "connection_closed"),
    ("the connection is lost", "connection_closed"),
)
_AFTER_SEND_MESSAGES = (
    ("consuming input failed", "receive_failed"),
    ("server closed the connection unexpectedly", "server_closed"),
    ("ssl syscall error", "ssl_error"),
    ("ssl connection has been closed", "ssl_error"),
    ("terminating connection", "terminated"),
    ("connection reset", "connection_reset"),
    ("broken pipe", "broken_pipe"),
    ("no connection to the server", "no_connection"),
    # psycopg's COMMIT/BEGIN/SET got an error result *besides* its own: a FATAL the server (or
    # PgBouncer) sent as the session ended, e.g. a PostgreSQL restart behind PgBouncer
    # (measured: "received 2 results from command 'COMMIT'"). The session is gone.
    ("results from command", "unexpected_results"),
)
#: Connect-phase reasons: they feed the circuit breaker.
_CONNECT_REASONS = frozenset(
    {"connect_failed", "connect_timeout", "connect_refused", "dns_failed", "cannot_connect_now",
     "too_many_connections", "connection_rejected"}
)  # fmt: skip

FAIL_UNKNOWN = Classification(Disposition.FAIL, "error")


def driver_error(exc: BaseException) -> BaseException:
    """The psycopg error under wrappers (SQLAlchemy's ``.orig``, ``raise ... from``)."""
    seen = 0
    while not isinstance(exc, psycopg.Error) and seen < 5:
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc, seen = inner, seen + 1
    return exc


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of ``exc`` (or of the driver error it wraps)."""
    code = getattr(driver_error(exc), "sqlstate", None)
    return code if isinstance(code, str) else None


def classify(exc: BaseException) -> Classification:
    """What a PostgreSQL/psycopg error means for retry safety (see DESIGN "Retry safety")."""
    err = driver_error(exc)
    if not isinstance(err, psycopg.Error):
        return _classify_foreign(exc)
    code = err.sqlstate
    if code == PGBOUNCER_SQLSTATE:  # all of PgBouncer's own errors: the text decides
        found = classify_pgbouncer(str(err))
        if found is not None:
            return found
    if code is not None:
        found = _classify_sqlstate(code)
        if found is not None:
            return found
        if not code.startswith("08"):
            return Classification(Disposition.FAIL, f"sqlstate_{code}")
    return _classify_message(err)


def _classify_sqlstate(code: str) -> Classification | None:
    if code in RETRY_TRANSACTION_SQLSTATES:
        return Classification(Disposition.RETRY_TRANSACTION, RETRY_TRANSACTION_SQLSTATES[code])
    if code in BEFORE_SEND_SQLSTATES:
        reason, scope = BEFORE_SEND_SQLSTATES[code]
        return Classification(
            Disposition.RETRY, reason, disconnect=True, scope=scope, connect_phase=True
        )
    if code in DISCONNECT_SQLSTATES:
        reason, disposition, scope = DISCONNECT_SQLSTATES[code]
        return Classification(disposition, reason, disconnect=True, scope=scope)
    if code in TIMEOUT_SQLSTATES:
        return Classification(Disposition.FAIL, TIMEOUT_SQLSTATES[code])
    return None


def _classify_message(err: psycopg.Error) -> Classification:
    text = str(err).lower()
    if "fatal:" in text:
        found = _classify_connect_fatal(text)
        if found is not None:
            return found
    is_connect = isinstance(err, pg_errors.ConnectionTimeout)
    for needle, reason in _BEFORE_SEND_MESSAGES:
        if needle in text or (is_connect and reason == "connect_timeout"):
            return Classification(
                Disposition.RETRY,
                reason,
                disconnect=True,
                scope=Scope.NONE,
                connect_phase=reason in _CONNECT_REASONS,
            )
    for needle, reason in _AFTER_SEND_MESSAGES:
        if needle in text:
            return Classification(
                Disposition.RETRY_IF_IDEMPOTENT, reason, disconnect=True, scope=Scope.CONNECTION
            )
    if isinstance(err, psycopg.OperationalError):
        # An OperationalError we cannot place: assume the connection is gone after send.
        return Classification(
            Disposition.RETRY_IF_IDEMPOTENT, "operational_error", disconnect=True,
            scope=Scope.CONNECTION,
        )  # fmt: skip
    return Classification(Disposition.FAIL, type(err).__name__.lower())


def _classify_connect_fatal(text: str) -> Classification | None:
    found = classify_pgbouncer(text)  # a FATAL at login carries no SQLSTATE to psycopg
    if found is not None:
        return found
    for needle, reason, scope in _TRANSIENT_CONNECT_MESSAGES:
        if needle in text:
            return Classification(
                Disposition.RETRY, reason, disconnect=True, scope=scope, connect_phase=True
            )
    for needle, reason in _PERMANENT_CONNECT_MESSAGES:
        if needle in text:
            return Classification(Disposition.FAIL, reason)
    return None


def _classify_foreign(exc: BaseException) -> Classification:
    # OS-level errors raised while connecting (DNS, refused) before psycopg wrapped them.
    if isinstance(exc, ConnectionRefusedError):
        return Classification(
            Disposition.RETRY, "connect_refused", disconnect=True, connect_phase=True
        )
    return FAIL_UNKNOWN


# --- statements ------------------------------------------------------------------------------

#: Side-effecting PostgreSQL functions, listed for readers and tests (``sql.py`` already rejects
#: any function outside its allow-list, so these are never idempotent).
PG_UNSAFE_FUNCTIONS = frozenset(
    {
        "nextval", "setval", "txid_current", "pg_current_xact_id", "pg_advisory_lock",
        "pg_advisory_xact_lock", "pg_try_advisory_lock", "pg_advisory_lock_shared",
        "pg_advisory_unlock", "pg_advisory_unlock_all", "dblink", "dblink_exec",
        "pg_notify", "set_config", "pg_terminate_backend", "pg_cancel_backend",
        "lo_import", "lo_create", "lo_unlink", "pg_stat_reset", "pg_switch_wal",
    }
)  # fmt: skip
PG_RULES = SqlRules(unsafe_functions=PG_UNSAFE_FUNCTIONS)


@functools.lru_cache(maxsize=4096)
def is_idempotent(sql: str) -> bool:
    """True when ``sql`` is a plain read that may safely run twice (conservative).

    Cached by text: SQLAlchemy hands back the same string for each compiled statement.
    """
    return is_read_statement(sql, PG_RULES)


# --- server-side timeouts ----------------------------------------------------------------------

#: ``client_connection_check_interval`` (PostgreSQL >= 14): the server polls the client socket
#: during long statements, so a statement whose client was cut off by the backstop stops soon
#: instead of running to completion.
CLIENT_CONNECTION_CHECK_INTERVAL = 1.0
_TRANSACTION_TIMEOUT_VERSION = 170000
_CONNECTION_CHECK_VERSION = 140000


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_timeouts(settings: Settings) -> dict[str, int]:
    """The always-available server GUCs (milliseconds) for the configured timeouts."""
    out: dict[str, int] = {}
    if settings.query_timeout:
        out["statement_timeout"] = _ms(settings.query_timeout)
    if settings.lock_timeout:
        out["lock_timeout"] = _ms(settings.lock_timeout)
    if settings.idle_in_transaction_timeout:
        out["idle_in_transaction_session_timeout"] = _ms(settings.idle_in_transaction_timeout)
    return out


def _versioned_timeouts(settings: Settings, server_version: int) -> dict[str, int]:
    out: dict[str, int] = {}
    if settings.transaction_timeout and server_version >= _TRANSACTION_TIMEOUT_VERSION:
        out["transaction_timeout"] = _ms(settings.transaction_timeout)
    if server_version >= _CONNECTION_CHECK_VERSION:
        out["client_connection_check_interval"] = _ms(CLIENT_CONNECTION_CHECK_INTERVAL)
    return out


def startup_options(settings: Settings) -> str | None:
    """libpq ``options`` (``-c statement_timeout=...``): zero round trips, not for PgBouncer."""
    gucs = server_timeouts(settings)
    return " ".join(f"-c {k}={v}" for k, v in gucs.items()) or None


def _set_config_sql(gucs: Mapping[str, int], *, local: bool) -> str | None:
    if not gucs:
        return None
    flag = "true" if local else "false"
    calls = ", ".join(f"set_config('{k}', '{v}', {flag})" for k, v in gucs.items())
    return f"SELECT {calls}"


def session_setup_sql(settings: Settings, server_version: int) -> str | None:
    """One statement run once per new connection (not under PgBouncer), or None.

    Only the version-gated GUCs go here: an unknown GUC in the startup packet is fatal.
    """
    if uses_pgbouncer(settings):
        return None
    return _set_config_sql(_versioned_timeouts(settings, server_version), local=False)


def local_timeouts_sql(settings: Settings, server_version: int) -> str | None:
    """PgBouncer transaction pooling: ``set_config(..., is_local => true)`` at each transaction
    start (session state would leak to other clients of the same server connection)."""
    gucs = server_timeouts(settings)
    if settings.transaction_timeout and server_version >= _TRANSACTION_TIMEOUT_VERSION:
        gucs["transaction_timeout"] = _ms(settings.transaction_timeout)
    return _set_config_sql(gucs, local=True)


#: PgBouncer's conventional port, used by ``pgbouncer="auto"``.
PGBOUNCER_PORT = 6432


def uses_pgbouncer(settings: Settings, url: str | None = None) -> bool:
    """``pgbouncer="on"``, or ``"auto"`` with the URL on port 6432 or ``?pgbouncer=true``."""
    if settings.pgbouncer != "auto":
        return settings.pgbouncer == "on"
    target = url or settings.url or ""
    try:
        parts = urlsplit(target)
        return parts.port == PGBOUNCER_PORT or "pgbouncer=true" in parts.query.lower()
    except ValueError:
        return False


# --- connect parameters ------------------------------------------------------------------------

#: libpq's connect_timeout is whole seconds and treats 1 as 2 (psycopg does too).
LIBPQ_MIN_CONNECT_TIMEOUT = 2
#: Keepalive probes after the idle time; interval = idle / KEEPALIVE_PROBES (>= 1 s).
KEEPALIVE_PROBES = 3


def connect_params(settings: Settings) -> dict[str, Any]:
    """libpq keyword parameters: keepalives, ``tcp_user_timeout``, connect_timeout, options.

    The libpq ``connect_timeout`` is a coarse fallback; :func:`connect` enforces the exact,
    possibly sub-second, ``settings.connect_timeout`` on the client.
    """
    params: dict[str, Any] = {}
    if settings.connect_timeout:
        params["connect_timeout"] = max(
            LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(settings.connect_timeout)
        )
    if settings.tcp_keepalive:
        idle = max(1, round(settings.tcp_keepalive))
        interval = max(1, idle // KEEPALIVE_PROBES)
        params.update(
            keepalives=1,
            keepalives_idle=idle,
            keepalives_interval=interval,
            keepalives_count=KEEPALIVE_PROBES,
            # Unacknowledged data (a request into a blackhole) fails after the same total time
            # a silent peer needs to fail the keepalive probes.
            tcp_user_timeout=(idle + interval * KEEPALIVE_PROBES) * 1000,
        )
    if not uses_pgbouncer(settings):
        options = startup_options(settings)
        if options:
            params["options"] = options
    return params


# --- connecting under a client deadline --------------------------------------------------------

# Per connect: (seconds allowed per host, absolute end of the caller's deadline or None).
# Per host, as libpq's own connect_timeout: psycopg connects to a multi-host URL one host at a
# time (one _connect_gen each), and one budget for all of them let a blackholed first host
# spend it, so the next host (the new primary after a failover) was never tried.
_ConnectBound = tuple[float, float | None]
_connect_deadline: contextvars.ContextVar[_ConnectBound | None] = contextvars.ContextVar(
    "poolguard_pg_connect_deadline", default=None
)

_ConnGen = Generator[Any, Any, Any]


def _connect_bound(timeout: float | None) -> _ConnectBound | None:
    """``timeout`` per host, the whole connect within the caller's deadline (if any)."""
    if timeout is None:
        return None
    left = remaining()
    return timeout, None if left is None else time.monotonic() + left


class _DeadlineSpent(pg_errors.ConnectionTimeout):
    """The caller's deadline ended a connect attempt that had less than half its per-host time:
    it says nothing about the host (see :func:`_tracked`)."""


def _bounded(gen: _ConnGen, bound: _ConnectBound | None) -> _ConnGen:
    """Wrap psycopg's connection generator (one host): give up once this host's time or the
    caller's deadline is spent.

    psycopg's wait loop wakes the generator at least every 0.1 s, so the bound is tight to
    ~0.1 s even when the server never answers (a deaf listener, a blackholed SYN).
    """
    if bound is None:
        return (yield from gen)
    per_host, overall = bound
    started = time.monotonic()
    deadline = started + per_host
    if overall is not None:
        deadline = min(deadline, overall)
    # Less than half its time (the caller's deadline nearly spent): the host was not given a
    # fair chance, and its failure is not held against it (_tracked).
    inconclusive = deadline - started < per_host / 2
    ready: Any = None
    item = next(gen)
    while True:
        now = time.monotonic()
        if now >= deadline:
            gen.close()
            if inconclusive:
                raise _DeadlineSpent("connection timeout expired (client deadline)")
            raise pg_errors.ConnectionTimeout("connection timeout expired (client deadline)")
        ready = yield item
        try:
            item = gen.send(ready)
        except StopIteration as stop:
            return stop.value


# --- multi-host: the host that answered last goes first ---------------------------------------
#
# libpq tries a multi-host URL's hosts in the order written. After a failover the first host
# is often the old primary: refused (cheap), a standby now (one round trip), or gone without a
# trace (a blackhole: every new connection then waits out connect_timeout on it first, and a
# caller whose deadline is not longer than that never reaches the new primary: measured, 0
# successful calls in 8 s with a 1 s deadline and connect_timeout=1). So, as pgjdbc does with
# its host status cache, each host's last connect attempt is remembered (process-wide) and
# the next connect tries the host that accepted one most recently first, hosts whose last
# attempt failed (refused, timed out, wrong role for target_session_attrs) last, the others in
# between, each group in the order written. Only with a target_session_attrs other than "any"
# (the order of an "any" list is the user's preference) and not with load_balance_hosts=random.

_Host = tuple[str, str]
#: (host, port) -> (last attempt succeeded?, when: monotonic).
_host_status: dict[_Host, tuple[bool, float]] = {}


def _host_list(params: Mapping[str, Any]) -> list[_Host] | None:
    """The (host, port) pairs of a multi-host connect that may be reordered, else None."""
    host = str(params.get("host") or "")
    if "," not in host or params.get("hostaddr"):
        return None
    attrs = str(params.get("target_session_attrs") or "any")
    if attrs == "any" or str(params.get("load_balance_hosts") or "") == "random":
        return None
    hosts = host.split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        return None  # libpq refuses it with its own message
    return list(zip(hosts, ports, strict=True))


def _rank(host: _Host) -> tuple[int, float]:
    ok, when = _host_status.get(host, (None, 0.0))
    if ok is None:
        return 1, 0.0
    return (0, -when) if ok else (2, 0.0)


def _reordered(conninfo: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with a multi-host list's host/port in the order to try (see above)."""
    try:
        hosts = _host_list(psycopg.conninfo.conninfo_to_dict(conninfo, **kwargs))
    except psycopg.Error:
        return kwargs  # not ours to judge: psycopg raises its own error
    if hosts is None:
        return kwargs
    order = sorted(hosts, key=_rank)  # stable: the written order within each group
    if order == hosts:
        return kwargs
    return {**kwargs, "host": ",".join(h for h, _ in order), "port": ",".join(p for _, p in order)}


def _attempt_host(conninfo: Any) -> _Host | None:
    """The host of one connect attempt worth tracking (psycopg makes one per host)."""
    if not isinstance(conninfo, str) or "target_session_attrs" not in conninfo:
        return None
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return None
    if str(params.get("target_session_attrs")) == "any":
        return None
    return str(params.get("host") or ""), str(params.get("port") or "")


def _tracked(gen: _ConnGen, host: _Host | None) -> _ConnGen:
    """Record how the attempt on ``host`` ended: any exit but success is a failure (refused,
    timed out, the wrong role, abandoned by psycopg's own timeout), except the caller's
    deadline."""
    if host is None:
        return (yield from gen)
    try:
        result = yield from gen
    except _DeadlineSpent:
        raise  # cut short by the caller's deadline: nothing learned about the host
    except BaseException:
        _host_status[host] = (False, time.monotonic())
        raise
    _host_status[host] = (True, time.monotonic())
    return result


class DeadlineConnection(psycopg.Connection[Any]):
    """psycopg Connection whose connect honours the client deadline set by :func:`connect`
    (per host), and tries a multi-host URL's last good host first."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        return super().connect(conninfo, **_reordered(conninfo, kwargs))

    @classmethod
    def _connect_gen(cls, *args: Any, **kwargs: Any) -> Any:
        gen = _bounded(super()._connect_gen(*args, **kwargs), _connect_deadline.get())
        return _tracked(gen, _attempt_host(args[0] if args else kwargs.get("conninfo")))


class DeadlineAsyncConnection(psycopg.AsyncConnection[Any]):
    """Async twin of :class:`DeadlineConnection`."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        return await super().connect(conninfo, **_reordered(conninfo, kwargs))

    @classmethod
    def _connect_gen(cls, *args: Any, **kwargs: Any) -> Any:
        gen = _bounded(super()._connect_gen(*args, **kwargs), _connect_deadline.get())
        return _tracked(gen, _attempt_host(args[0] if args else kwargs.get("conninfo")))


@contextlib.contextmanager
def connect_deadline(timeout: float | None) -> Iterator[None]:
    """Bound each :class:`DeadlineConnection` / :class:`DeadlineAsyncConnection` connect made in
    this block (sync code or an asyncio task) by ``timeout`` seconds per host (a multi-host
    URL tries its hosts in turn, as libpq does), all within the current ``poolguard.deadline``;
    ``None`` = no bound. For callers that run ``connection_class.connect`` themselves, such as
    psycopg_pool's background workers."""
    token = _connect_deadline.set(_connect_bound(timeout))
    try:
        yield
    finally:
        _connect_deadline.reset(token)


def connect(conninfo: str = "", *, timeout: float | None, **kwargs: Any) -> DeadlineConnection:
    """``psycopg.connect`` bounded by ``timeout`` seconds per host on the client (sub-second
    works), all hosts within the current ``poolguard.deadline``."""
    token = _connect_deadline.set(_connect_bound(timeout))
    try:
        return DeadlineConnection.connect(conninfo, **kwargs)
    finally:
        _connect_deadline.reset(token)


async def connect_async(
    conninfo: str = "", *, timeout: float | None, **kwargs: Any
) -> DeadlineAsyncConnection:
    """Async twin of :func:`connect`."""
    token = _connect_deadline.set(_connect_bound(timeout))
    try:
        return await DeadlineAsyncConnection.connect(conninfo, **kwargs)
    finally:
        _connect_deadline.reset(token)


# --- validation and reset ----------------------------------------------------------------------

#: The cheapest round trip: an empty query (EmptyQueryResponse), no parse, no plan, no row.
PING_SQL = ""


def ping(conn: psycopg.Connection[Any]) -> None:
    """One round trip; raises the driver error when the connection is dead.

    Bound it with :mod:`poolguard.integrations.backstop`: psycopg sync has no read timeout.
    """
    conn.execute(PING_SQL)


async def ping_async(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(PING_SQL)


def needs_reset(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool | None:
    """Does returning ``conn`` to a pool need a ROLLBACK? (no round trip: libpq's state)

    False: idle, nothing to undo. True: inside a (possibly failed) transaction, roll back.
    None: the connection is broken or busy mid-query: discard it.
    """
    if conn.closed or conn.broken:
        return None
    # pgconn's int, not conn.info's: ``info`` builds a ConnectionInfo and an enum on every
    # access (2.2 us vs 0.06 us measured), and this runs on every return to the pool.
    status = conn.pgconn.transaction_status
    if status == TransactionStatus.IDLE:
        return False
    if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return True
    if status == TransactionStatus.ACTIVE and rollback_pending(conn):
        return False  # busy with our own ROLLBACK (send_rollback): nothing more to undo
    return None


# --- server role (failover) ------------------------------------------------------------------

#: target_session_attrs values that want a writable server / a standby.
_WANTS_WRITABLE = frozenset({"read-write", "primary"})
_WANTS_STANDBY = frozenset({"read-only", "standby"})


def wrong_role(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Is ``conn``'s server no longer what its ``target_session_attrs`` asked for (a primary
    demoted or fenced read-only, a standby promoted)? libpq only checks at connect time.

    No round trip: PostgreSQL >= 14 reports ``in_hot_standby`` and
    ``default_transaction_read_only`` to clients when they change (ParameterStatus, read with
    the reply to any statement, a validation ping included). Older servers: always False.
    """
    pgconn = conn.pgconn
    standby = pgconn.parameter_status(b"in_hot_standby")
    if standby is None:
        return False
    read_only = (
        standby == b"on" or pgconn.parameter_status(b"default_transaction_read_only") == b"on"
    )
    attrs = _target_session_attrs(conn)
    if attrs in _WANTS_WRITABLE:
        return read_only if attrs == "read-write" else standby == b"on"
    if attrs in _WANTS_STANDBY:
        return not read_only if attrs == "read-only" else standby != b"on"
    return False  # any, prefer-standby: every server is acceptable


def _target_session_attrs(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    try:
        return str(conn.info.get_parameters().get("target_session_attrs", "any"))
    except psycopg.Error:
        return "any"


# --- a ROLLBACK whose reply is read later ---------------------------------------------------
#
# Ending a read-only transaction costs a round trip the caller waits for, although nothing can
# go wrong with it that the caller could act on. So at the end of a SQLAlchemy Connection, the
# ROLLBACK is *sent* (the server ends the transaction as soon as it reads it: no idle
# connection sits in the pool inside a transaction, holding locks or an xmin) and its reply is
# read when the connection is next taken from the pool, usually long arrived by then. Until
# that reply is read libpq reports the connection ACTIVE ("another command is already in
# progress" for any other use), which is why only the pool's checkout may take it back.

#: Set on a psycopg connection whose ROLLBACK was sent and whose reply is not read yet.
_ROLLBACK_SENT = "_poolguard_rollback_sent"
_IN_TRANSACTION = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


def rollback_deferrable(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """May :func:`send_rollback` end this connection's transaction? Only when psycopg's own
    ``rollback()`` would send a bare ROLLBACK and nothing else: a transaction open, no pipeline,
    no ``conn.transaction()`` block, no two-phase transaction, no prepared statement (psycopg
    deallocates them all after a ROLLBACK: another round trip), nobody holding the lock."""
    if conn.pgconn.transaction_status not in _IN_TRANSACTION:
        return False
    prepared = getattr(conn, "_prepared", None)
    return bool(
        prepared is not None
        and not getattr(prepared, "_names", True)
        and not getattr(conn, "_pipeline", True)
        and not getattr(conn, "_num_transactions", True)
        and not getattr(conn, "_tpc", True)
        and not conn.lock.locked()
    )


def send_rollback(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Send ROLLBACK without reading its reply (:func:`rollback_settled` reads it). Call only
    when :func:`rollback_deferrable` said so; raises psycopg's error when the connection is
    broken, like ``rollback()``."""
    pgconn = conn.pgconn
    pgconn.send_query(b"ROLLBACK")
    # What psycopg's rollback() does to its prepared-statement bookkeeping (none are prepared:
    # see rollback_deferrable), so the counts start over as they would.
    conn._prepared.clear()
    setattr(conn, _ROLLBACK_SENT, True)
    if pgconn.flush() != 0:
        # The socket did not take 13 bytes: the peer stopped reading. The server must not keep
        # the transaction open, and closing the connection ends it as surely as a ROLLBACK.
        conn.close()


def rollback_pending(conn: Any) -> bool:
    """Was a ROLLBACK sent on ``conn`` whose reply is not read yet?"""
    # ``is True``: a stand-in connection (SQLAlchemy's own tests use a Mock) answers any
    # attribute with something truthy, and would be "settled" (and discarded) at each checkout.
    return getattr(conn, _ROLLBACK_SENT, False) is True


def rollback_reply_ready(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Has the whole reply arrived (reading it will not wait)? Raises psycopg's error when the
    connection broke meanwhile."""
    pgconn = conn.pgconn
    pgconn.consume_input()
    return not pgconn.is_busy()


def rollback_settled(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], results: list[Any]
) -> None:
    """Check the reply read for :func:`send_rollback`: the connection is idle again, or this
    raises ``psycopg.OperationalError`` (discard the connection)."""
    setattr(conn, _ROLLBACK_SENT, False)
    pgconn = conn.pgconn
    if (
        len(results) == 1
        and results[0].status == ExecStatus.COMMAND_OK
        and pgconn.transaction_status == TransactionStatus.IDLE
    ):
        return
    detail = pgconn.error_message.decode(errors="replace").strip() or "unexpected reply"
    raise psycopg.OperationalError(f"the ROLLBACK sent at the last return failed: {detail}")


# --- BEGIN sent with the first statement ----------------------------------------------------
#
# With autocommit off psycopg sends BEGIN before a transaction's first statement and waits for
# its reply: a round trip of its own (also in psycopg's pipeline mode, which syncs after the
# BEGIN). Here BEGIN and the statement go out together, in libpq pipeline mode with a single
# Sync: one round trip, the same transaction. The statement still runs through psycopg's own
# cursor code (adaptation, prepared statements, results): a small stand-in for psycopg's
# Pipeline collects what the cursor queues, and the replies are matched to it as psycopg's
# Pipeline does (BasePipeline._process_results).


class _Queued:
    """What psycopg's cursor uses of a Pipeline while it queues a statement."""

    __slots__ = ("command_queue", "result_queue")

    def __init__(self) -> None:
        self.command_queue: deque[Any] = deque()
        self.result_queue: deque[Any] = deque()

    def drop_unsent(self) -> None:
        """Forget the commands not handed to libpq yet, and the replies they would have had."""
        for _ in range(len(self.command_queue)):
            self.result_queue.pop()
        self.command_queue.clear()

    def _communicate_gen(self) -> Generator[Any, Any, None]:
        # Only hand the commands to libpq (it buffers in pipeline mode): the Sync flushes all.
        while self.command_queue:
            self.command_queue.popleft()()
        return
        yield  # a generator, as psycopg's cursor expects


@functools.cache
def pipelined_begin_supported() -> bool:
    """libpq >= 14 (pipeline mode) and the psycopg internals the cursors below rely on."""
    return bool(
        psycopg.Pipeline.is_supported()
        and hasattr(psycopg.Connection, "_get_tx_start_command")
        and hasattr(psycopg.Cursor, "_execute_gen")
        and hasattr(psycopg.Cursor, "_set_results")
    )


def begins_here(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Would psycopg send BEGIN before the next statement (and may it go with it)?"""
    return bool(
        not conn._autocommit
        and conn._pipeline is None
        and conn.pgconn.transaction_status == TransactionStatus.IDLE
        and conn.pgconn.pipeline_status == 0
    )


def _begin_with_gen(
    conn: Any, cursor: Any, query: Any, params: Any, prepare: bool | None, binary: bool | None
) -> Generator[Any, Any, None]:
    pgconn = conn.pgconn
    queued = _Queued()
    failure: Exception | None = None
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(conn._get_tx_start_command(), None)
        # libpq reports the connection ACTIVE now: psycopg's cursor adds no BEGIN of its own.
        conn._pipeline = queued
        try:
            yield from cursor._execute_gen(query, params, prepare=prepare, binary=binary)
            yield from queued._communicate_gen()  # deallocations queued after the statement
        except psycopg.Error as exc:
            # The statement could not be queued (its parameters did not adapt...): as psycopg
            # alone, whose BEGIN had already run, the transaction is opened and the error raised.
            failure = exc
            queued.drop_unsent()
        finally:
            conn._pipeline = None
        replies = yield from _sync_and_fetch(conn)
    finally:
        _leave_pipeline(pgconn)
    if failure is not None:
        _attach(conn, replies[:1], deque())
        raise failure
    _attach(conn, replies, queued.result_queue)


def _sync_and_fetch(conn: Any) -> Generator[Any, Any, list[list[Any]]]:
    """Send everything with one Sync; the replies up to it, grouped per command."""
    pgconn = conn.pgconn
    try:
        pgconn.pipeline_sync()
    except psycopg.OperationalError:
        # As when BEGIN alone could not be sent: "sending query failed" (before send).
        detail = pgconn.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(f"sending query failed: {detail}") from None
    yield from generators.send(pgconn)
    replies: list[list[Any]] = []
    try:
        while True:
            results = yield from generators.fetch_many(pgconn)
            if not results or results[-1].status == ExecStatus.PIPELINE_SYNC:
                return replies
            replies.append(results)
    except psycopg.OperationalError:
        # The server's own error (57P01 "terminating connection" before it closed) beats
        # libpq's "server closed the connection", as psycopg's fetch prefers it too.
        server = _first_error(conn, replies)
        if server is None:
            raise
        raise server from None


def _leave_pipeline(pgconn: Any) -> None:
    """Back to normal mode; a connection that cannot leave it (interrupted mid-pipeline:
    results still pending) is closed rather than left in a state psycopg does not expect."""
    if pgconn.status != psycopg.pq.ConnStatus.OK or not pgconn.pipeline_status:
        return
    try:
        pgconn.exit_pipeline_mode()
    except psycopg.OperationalError:
        pgconn.finish()


def _first_error(conn: Any, replies: list[list[Any]]) -> psycopg.Error | None:
    for results in replies:
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                return pg_errors.error_from_result(result, encoding=conn.pgconn._encoding)
    return None


def _attach(conn: Any, replies: list[list[Any]], pending: deque[Any]) -> None:
    """Raise the first error (BEGIN's first), else give the cursor its results."""
    if not replies or len(replies) != len(pending) + 1:
        raise psycopg.InterfaceError(
            f"pipelined BEGIN: {len(replies)} replies for {len(pending) + 1} commands"
        )
    begin = replies[0][0]
    if begin.status == ExecStatus.FATAL_ERROR:
        raise pg_errors.error_from_result(begin, encoding=conn.pgconn._encoding)
    for item, results in zip(pending, replies[1:], strict=True):
        if item is None:  # a prepare or deallocate
            if results[0].status == ExecStatus.FATAL_ERROR:
                raise pg_errors.error_from_result(results[0], encoding=conn.pgconn._encoding)
            continue
        cursor, prepinfo = item
        if prepinfo:
            key, prep, name = prepinfo
            conn._prepared.validate(key, prep, name, results)
        cursor._check_results(results)
        cursor._set_results(results)


class FirstStatementCursor(psycopg.Cursor[Any]):
    """psycopg's Cursor; a transaction's first ``execute()`` sends BEGIN with the statement."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        conn = self._conn
        if not begins_here(conn):
            return super().execute(query, params, **kwargs)
        with conn.lock:
            conn.wait(
                _begin_with_gen(
                    conn, self, query, params, kwargs.get("prepare"), kwargs.get("binary")
                )
            )
        return self


class AsyncFirstStatementCursor(psycopg.AsyncCursor[Any]):
    """The asyncio twin of :class:`FirstStatementCursor`."""

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        conn = self._conn
        if not begins_here(conn):
            return await super().execute(query, params, **kwargs)
        async with conn.lock:
            await conn.wait(
                _begin_with_gen(
                    conn, self, query, params, kwargs.get("prepare"), kwargs.get("binary")
                )
            )
        return self
