"""Per-driver adapters: what the SQLAlchemy integration asks of a database backend.

The engine, pool, Connection subclass and ``run_transaction`` are dialect-neutral: everything
that depends on the driver (classify an error, ping, read the transaction status without a round
trip, find the socket the backstop cuts, connect under a client deadline, set server-side
timeouts) goes through one :class:`SqlBackend`, chosen from the URL by :func:`backend_for`
(asyncpg's is ``_asyncpg.py``).
Each adapter is a thin translation onto ``poolguard.backends.<db>``, which holds the knowledge.
Backend modules are imported lazily, so a MySQL-only install never imports psycopg.

Connecting: :meth:`SqlBackend.connect` *replaces* the dialect's ``connect`` (the last step
SQLAlchemy takes, after every ``do_connect`` listener has had its say over the arguments), so a
user's listener (per-connection credentials) runs first and the connect that follows is bounded
by the client deadline. When SQLAlchemy's own connect would not call the driver's own
``connect`` (``module=``, a patched ``dbapi.connect``, a dialect overriding ``connect``), that
override is called as is; asyncio creators (``async_creator=``, ``async_creator_fn``) are
bounded by ``asyncio.wait_for``.

The adapters sit below the engine state: they read it through the :class:`StateView`
protocol and never import ``_state.py``, which holds one (:class:`EngineState`).
"""

from __future__ import annotations

import asyncio
import functools
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from poolguard.config.urls import Dialect
from poolguard.core.deadline import remaining
from poolguard.core.disposition import Classification, Scope
from poolguard.errors import ConfigError
from poolguard.integrations.sqlalchemy._compat import await_only

if TYPE_CHECKING:
    from poolguard.config.settings import Settings
    from poolguard.core.retry import Guard


__all__ = ["MySQLBackend", "PostgresBackend", "SqlBackend", "backend_for"]


class StateView(Protocol):
    """What a backend reads of the engine's state. The state (``_state.EngineState``) sits above
    the backends and holds one; this protocol keeps the import one-way."""

    settings: Settings
    guard: Guard
    is_async: bool
    pgbouncer: bool
    suspect_before: float
    server_version: int
    server_info: str

    def connect_timeout(self) -> float | None: ...


class SqlBackend:
    """The questions the integration asks; one subclass per dialect."""

    name = "sql"
    #: ``run_transaction``'s default ``retry_on`` (SQLSTATEs / errnos as text).
    retry_codes: frozenset[str] = frozenset()
    #: Does the on-connect setup statement open a transaction that must be committed?
    setup_commits = False
    #: Does :meth:`is_idle` see every open transaction (libpq: yes; MySQL's status flags miss
    #: read-only ones, so the Connection also remembers that its transaction ran something)?
    exact_transaction_status = True
    ambiguous_hint = "make the unit idempotent, or check its outcome before running it again"

    def classify(self, exc: BaseException) -> Classification:
        raise NotImplementedError

    def error_code(self, exc: BaseException) -> str | None:
        """The server's error code (SQLSTATE, errno) as text, for ``retry_on``."""
        raise NotImplementedError

    def is_idempotent(self, sql: str) -> bool:
        raise NotImplementedError

    def connect_args(self, settings: Settings, *, is_async: bool) -> dict[str, Any]:
        raise NotImplementedError

    def adapt_dialect(self, dialect: Any, state: StateView) -> None:
        """Adjust this engine's dialect instance, once, as the engine is made (before any
        connect: an ``async_creator`` bypasses :meth:`connect`)."""

    def connect(
        self,
        state: StateView,
        dialect_connect: Callable[..., Any],
        native: bool,
        cargs: list[Any],
        cparams: dict[str, Any],
    ) -> Any:
        """A new DBAPI connection, bounded by the connect deadline; ``dialect_connect`` is the
        dialect's own connect, ``native`` says whether it would call the driver's connect."""
        # ``?pgbouncer=true`` (POOLGUARD_PGBOUNCER=auto) is poolguard's marker, not a driver
        # argument, but SQLAlchemy hands every URL query parameter to the driver (psycopg
        # refused it: 'invalid connection option "pgbouncer"').
        cparams.pop("pgbouncer", None)
        if state.is_async:
            if native:
                user = cparams.get("async_creator_fn")
                cparams["async_creator_fn"] = (
                    self.async_connector(state)
                    if user is None
                    else functools.partial(self.bounded_creator, state, user)
                )
            return dialect_connect(*cargs, **cparams)
        if native:
            return self.sync_connect(state, cargs, cparams)
        return dialect_connect(*cargs, **cparams)

    def sync_connect(self, state: StateView, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """The driver's connect under the client deadline (sync)."""
        raise NotImplementedError

    def async_connector(self, state: StateView) -> Callable[..., Any]:
        """An ``async_creator_fn`` for the driver's connect under the client deadline."""
        raise NotImplementedError

    async def bounded_creator(
        self, state: StateView, creator: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """A user's asyncio creator bounded by the connect deadline."""
        timeout = state.connect_timeout()
        try:
            return await asyncio.wait_for(creator(*args, **kwargs), timeout)
        except asyncio.TimeoutError:
            raise self.connect_timed_out(timeout) from None

    def connect_timed_out(self, timeout: float | None) -> Exception:
        """The driver's own "connect timed out" error (classified as a connect failure)."""
        raise NotImplementedError

    def merge_connect_args(self, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        """poolguard's driver arguments with the user's ``connect_args`` over them."""
        return {**ours, **theirs}

    def setup_sql(self, state: StateView, driver_conn: Any) -> str | None:
        """Statement to run once on a new connection (records the server version first)."""
        raise NotImplementedError

    def ping_sql(self) -> str | None:
        """SQL for the validation ping, or None to use the driver's ``ping()``."""
        return None

    def wrong_role(self, driver_conn: Any) -> bool:
        """After a validation ping: is the server no longer the role the URL asked for (a
        failover demoted it)? Then the connection is replaced, not reused."""
        return False

    def ping(self, dbapi_connection: Any) -> bool:
        """Ping in the driver's own way and return True, or return False for the generic ping
        (:meth:`ping_sql`, run by the pool)."""
        return False

    def found_closed(self, driver_conn: Any) -> bool:
        """Does the driver already know, without a round trip, that the connection is dead?"""
        return False

    def fileno(self, driver_conn: Any) -> int | None:
        """The socket the backstop shuts down, or None when the connection is closed."""
        raise NotImplementedError

    def is_idle(self, driver_conn: Any) -> bool | None:
        """True outside a transaction, False inside, None when the state is unknown (closed)."""
        raise NotImplementedError

    def needs_reset(self, driver_conn: Any) -> bool | None:
        """False: nothing to undo; True: ROLLBACK; None: discard (broken or busy)."""
        raise NotImplementedError

    def local_timeouts_sql(self, state: StateView) -> str | None:
        """Timeouts to set at each transaction start (PgBouncer transaction pooling)."""
        return None

    def rollback_deferrable(self, driver_conn: Any) -> bool:
        """Can :meth:`send_rollback` end this connection's transaction (reply read later)?"""
        return False

    def send_rollback(self, driver_conn: Any) -> None:
        """Send ROLLBACK without waiting for its reply; :meth:`settle` reads it."""
        raise NotImplementedError

    def settle(self, state: StateView, dbapi_connection: Any, timeout: float) -> None:
        """Before a pooled connection is used again: read the reply of a ROLLBACK sent at its
        last return, waiting at most ``timeout`` (and the deadline). Raises
        ``sqlalchemy.exc.DisconnectionError`` when the connection must be discarded."""

    def check_resolve(self) -> None:
        """Raise ConfigError when ``resolve_ambiguous`` cannot work on this backend."""


# --- PostgreSQL (psycopg 3) ---------------------------------------------------------------------


class PostgresBackend(SqlBackend):
    """psycopg 3, sync and async (the same driver serves both)."""

    name = "postgres"
    setup_commits = True
    ambiguous_hint = (
        "run it through poolguard.run_transaction(..., resolve_ambiguous=True) to have"
        " poolguard check the outcome on the server"
    )

    def __init__(self) -> None:
        from psycopg.pq import TransactionStatus

        from poolguard.backends import postgres as pg

        self.pg = pg
        self.retry_codes = frozenset(pg.RETRY_TRANSACTION_SQLSTATES)
        self._idle = TransactionStatus.IDLE
        self._unknown = TransactionStatus.UNKNOWN
        self._in_transaction = (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def classify(self, exc: BaseException) -> Classification:
        return self.pg.classify(exc)

    def is_idempotent(self, sql: str) -> bool:
        return self.pg.is_idempotent(sql)

    def needs_reset(self, driver_conn: Any) -> bool | None:
        # backends.postgres.needs_reset, on the one libpq read (see is_idle): runs per return.
        status = driver_conn.pgconn.transaction_status
        if status == self._idle:
            return False
        if status in self._in_transaction:
            return True
        # ACTIVE with our own ROLLBACK on its way (send_rollback): read at the next checkout.
        return False if self.pg.rollback_pending(driver_conn) else None

    def error_code(self, exc: BaseException) -> str | None:
        return self.pg.sqlstate(exc)

    def connect_args(self, settings: Settings, *, is_async: bool) -> dict[str, Any]:
        params = self.pg.connect_params(settings)
        if self.pg.uses_pgbouncer(settings):
            # Server-side prepared statements do not survive transaction pooling.
            params["prepare_threshold"] = None
        return params

    def sync_connect(self, state: StateView, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        if self._pipelined_begin(state):
            cparams.setdefault("cursor_factory", self.pg.FirstStatementCursor)
        return self.pg.connect(*cargs, timeout=state.connect_timeout(), **cparams)

    def async_connector(self, state: StateView) -> Callable[..., Any]:
        return functools.partial(
            _connect_async,
            self.pg.connect_async,
            timeout=state.connect_timeout(),
            cursor_factory=(
                self.pg.AsyncFirstStatementCursor if self._pipelined_begin(state) else None
            ),
        )

    def _pipelined_begin(self, state: StateView) -> bool:
        """Send a transaction's BEGIN with its first statement (backends.postgres)? Not through
        PgBouncer (transaction pooling), nor where libpq has no pipeline mode."""
        return not state.pgbouncer and bool(self.pg.pipelined_begin_supported())

    def connect_timed_out(self, timeout: float | None) -> Exception:
        from psycopg import errors

        return errors.ConnectionTimeout(
            f"connection timeout expired after {timeout or 0:.2f}s (client deadline)"
        )

    def merge_connect_args(self, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        merged = {**ours, **theirs}
        if ours.get("options") and theirs.get("options"):
            # Both apply: libpq takes several -c settings, and for one setting given twice
            # the later (the user's) wins.
            merged["options"] = f"{ours['options']} {theirs['options']}"
        return merged

    def setup_sql(self, state: StateView, driver_conn: Any) -> str | None:
        state.server_version = driver_conn.info.server_version
        if state.pgbouncer:
            return None
        settings = state.settings
        if _has_options(driver_conn, self.pg.startup_options(settings)):
            return self.pg.session_setup_sql(settings, state.server_version)
        # Opened without poolguard's startup options (creator=, a pool= instance, a do_connect
        # listener that connected by itself): the server timeouts go in here instead.
        gucs = {
            **self.pg.server_timeouts(settings),
            **self.pg._versioned_timeouts(settings, state.server_version),
        }
        return self.pg._set_config_sql(gucs, local=False)

    def ping_sql(self) -> str | None:
        return self.pg.PING_SQL

    def wrong_role(self, driver_conn: Any) -> bool:
        return self.pg.wrong_role(driver_conn)

    def fileno(self, driver_conn: Any) -> int | None:
        return driver_conn.fileno()  # type: ignore[no-any-return]

    def is_idle(self, driver_conn: Any) -> bool | None:
        # libpq reports UNKNOWN for a closed or broken connection (PQtransactionStatus), so
        # one read of pgconn's int answers all three cases (conn.closed/.broken are
        # properties reading the same pgconn).
        status = driver_conn.pgconn.transaction_status
        if status == self._idle:
            return True
        return None if status == self._unknown else False

    def local_timeouts_sql(self, state: StateView) -> str | None:
        if not state.pgbouncer:
            return None
        return self.pg.local_timeouts_sql(state.settings, state.server_version)

    def rollback_deferrable(self, driver_conn: Any) -> bool:
        return self.pg.rollback_deferrable(driver_conn)

    def send_rollback(self, driver_conn: Any) -> None:
        self.pg.send_rollback(driver_conn)

    def settle(self, state: StateView, dbapi_connection: Any, timeout: float) -> None:
        # Runs at every checkout: one attribute read when nothing is pending.
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        driver = getattr(raw, "driver_connection", raw)
        if not self.pg.rollback_pending(driver):
            return
        try:
            results = _read_reply(self.pg, driver, state.is_async, timeout)
            self.pg.rollback_settled(driver, results)
        except Exception as exc:
            raise _settle_failed(self, state, exc) from exc


async def _connect_async(
    connect: Callable[..., Any], *args: Any, timeout: float | None, cursor_factory: Any, **kw: Any
) -> Any:
    """psycopg's async connect with our cursor class unless the user chose one."""
    if cursor_factory is not None:
        kw.setdefault("cursor_factory", cursor_factory)
    return await connect(*args, timeout=timeout, **kw)


def _read_reply(pg: Any, driver: Any, is_async: bool, timeout: float) -> list[Any]:
    """The results of a ROLLBACK sent earlier: without waiting when they are there (the common
    case: the server answered while the connection sat in the pool), else waiting for the
    socket at most ``timeout`` (capped by the deadline), then failing."""
    pgconn = driver.pgconn
    results: list[Any] = []
    limit: float | None = None
    by_deadline = False
    while True:
        if pg.rollback_reply_ready(driver):
            result = pgconn.get_result()
            if result is None:
                return results
            results.append(result)
            continue
        if limit is None:
            bound, by_deadline = _wait_bound(timeout)
            limit = time.monotonic() + bound
        wait = limit - time.monotonic()
        if wait <= 0 or not _readable(pgconn.socket, wait, is_async):
            raise _NoReply(f"no reply within {bound:.2f}s", deadline=by_deadline)


def _wait_bound(timeout: float) -> tuple[float, bool]:
    """How long to wait for a deferred reply: ``timeout``, or what is left of the deadline when
    that is shorter (then True: the caller's deadline, not our bound, ends the wait)."""
    left = remaining()
    if left is not None and left < timeout:
        return max(0.0, left), True
    return timeout, False


def _settle_failed(backend: SqlBackend, state: StateView, exc: Exception) -> Exception:
    """Count a deferred ROLLBACK that got no good reply; the error that discards the connection."""
    if isinstance(exc, _NoReply):
        state.guard.stats.evict("timeout")
        if exc.deadline:
            # The caller's deadline, not our bound, ended the wait: the server does not
            # answer on an open connection and no time is left to connect another one.
            return _deadline_spent(state, exc)
        return _discard(exc)
    # The server closed the connection while it sat in the pool. libpq often reports only the
    # EOF ("server closed the connection unexpectedly", a CONNECTION-scope error) where a
    # statement would have read the server's 57P01/57P02 first (MySQL: 2013 where it would
    # have read 1927): a restart or an admin kill, POOL scope. Treated as the latter: the older
    # connections are validated at their next checkout, as after a statement met it.
    c = backend.classify(exc)
    if c.disconnect or c.scope is Scope.POOL:
        state.suspect_before = time.time()
    state.guard.stats.disconnect(c.reason, exc)
    state.guard.stats.evict("disconnect")
    return _discard(exc)


class _NoReply(Exception):
    """The reply to a deferred ROLLBACK did not arrive in time (server frozen, network down)."""

    def __init__(self, message: str, *, deadline: bool) -> None:
        super().__init__(message)
        self.deadline = deadline


def _deadline_spent(state: StateView, exc: Exception) -> Exception:
    from poolguard.errors import QueryTimeout
    from poolguard.integrations.sqlalchemy._errors import sa_dropin

    return sa_dropin(
        QueryTimeout,
        f"{state.guard.name}: deadline exceeded at checkout: the server did not answer the"
        " ROLLBACK sent when this connection was last returned (server frozen, or the network"
        " down); the connection was discarded",
        orig=exc,
        hint="raise the poolguard.deadline() budget if the server is legitimately slow",
        invalidated=True,
    )


def _discard(exc: Exception) -> Exception:
    from sqlalchemy import exc as sa_exc

    return sa_exc.DisconnectionError(
        f"the ROLLBACK sent at the connection's last return got no good reply ({exc});"
        " the connection was discarded"
    )


def _readable(fd: int, timeout: float, is_async: bool) -> bool:
    """Wait until ``fd`` is readable, at most ``timeout`` seconds (False: timed out)."""
    if not is_async:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000.0))
    # Inside SQLAlchemy's greenlet on the event loop: wait through the greenlet bridge.
    return bool(await_only(_areadable(fd, timeout)))


async def _areadable(fd: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(True)

    loop.add_reader(fd, wake)
    try:
        return await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


def _has_options(driver_conn: Any, options: str | None) -> bool:
    """Did this connection start with poolguard's libpq ``options`` (no round trip: libpq
    keeps the connection parameters it used)?"""
    if not options:
        return True
    used = driver_conn.pgconn.options or b""
    return options in used.decode(errors="replace")


# --- MySQL / MariaDB (PyMySQL sync, aiomysql async) --------------------------------------------


#: Set on a PyMySQL/aiomysql connection when it is opened (wall clock, like ``read_only_seen``).
_OPENED_AT = "_poolguard_opened_at"


class MySQLBackend(SqlBackend):
    """PyMySQL (sync) and aiomysql (asyncio); MariaDB and MySQL alike."""

    name = "mysql"
    exact_transaction_status = False
    ambiguous_hint = (
        "make the unit idempotent (e.g. a unique key on a request id) and check before re-running"
    )

    def __init__(self, backstop_grace: float) -> None:
        from poolguard.backends import mysql

        self.my = mysql
        self.retry_codes = frozenset(str(code) for code in mysql.RETRY_TRANSACTION_ERRNOS)
        self.backstop_grace = backstop_grace
        #: Wall clock of the last read-only refusal (1290/1836/1792): see :meth:`wrong_role`.
        self.read_only_seen = 0.0

    def classify(self, exc: BaseException) -> Classification:
        c = self.my.classify(exc)
        if c.reason == "read_only":
            self.read_only_seen = time.time()
        return c

    def wrong_role(self, driver_conn: Any) -> bool:
        """Opened before a read-only refusal: replace it. A switchover demotes the primary to
        a read-only server that still answers pings, so the POOL-scope validation alone kept
        every old connection, and each write drew them in turn, spending one retry per stale
        connection until the retry budget ran out (measured: 9 writes surfaced 1290 through
        two switchovers). MySQL reports no role change without a round trip, so the age of
        the connection decides; one opened since then reached the server the URL names now."""
        opened = getattr(driver_conn, _OPENED_AT, None)
        return opened is not None and opened < self.read_only_seen

    def is_idempotent(self, sql: str) -> bool:
        return self.my.is_idempotent(sql)

    def needs_reset(self, driver_conn: Any) -> bool | None:
        return self.my.needs_reset(driver_conn)

    def rollback_deferrable(self, driver_conn: Any) -> bool:
        return self.my.rollback_deferrable(driver_conn)

    def send_rollback(self, driver_conn: Any) -> None:
        self.my.send_rollback(driver_conn)

    def settle(self, state: StateView, dbapi_connection: Any, timeout: float) -> None:
        # Runs at every checkout: one attribute read when nothing is pending.
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        driver = getattr(raw, "driver_connection", raw)
        if not self.my.rollback_pending(driver):
            return
        try:
            _read_ok_reply(self.my, driver, state.is_async, timeout)
        except Exception as exc:
            raise _settle_failed(self, state, exc) from exc

    def fileno(self, driver_conn: Any) -> int | None:
        return self.my.socket_fileno(driver_conn)

    def error_code(self, exc: BaseException) -> str | None:
        code = self.my.errno_of(exc)
        return None if code is None else str(code)

    def connect_args(self, settings: Settings, *, is_async: bool) -> dict[str, Any]:
        return self.my.connect_params(
            settings, is_async=is_async, backstop_grace=self.backstop_grace
        )

    def sync_connect(self, state: StateView, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        timeout = state.connect_timeout()
        return _pymysql_connect(
            cargs, cparams, timeout=timeout, keepalive=state.settings.tcp_keepalive
        )

    def async_connector(self, state: StateView) -> Callable[..., Any]:
        return functools.partial(
            _aiomysql_connect,
            timeout=state.connect_timeout(),
            keepalive=state.settings.tcp_keepalive,
        )

    def connect_timed_out(self, timeout: float | None) -> Exception:
        import pymysql

        err: Exception = pymysql.err.OperationalError(
            _CONNECT_FAILED, f"Can't connect to MySQL server (timed out after {timeout or 0:.2f}s)"
        )
        return err

    def setup_sql(self, state: StateView, driver_conn: Any) -> str | None:
        setattr(driver_conn, _OPENED_AT, time.time())  # runs once per new connection
        state.server_info = str(driver_conn.get_server_info())
        return self.my.session_setup_sql(state.settings, state.server_info)

    def is_idle(self, driver_conn: Any) -> bool | None:
        inside = self.my.in_transaction(driver_conn)
        return None if inside is None else not inside

    def check_resolve(self) -> None:
        raise ConfigError(
            "resolve_ambiguous=True needs PostgreSQL (pg_xact_status): MySQL/MariaDB cannot"
            " look up a transaction's outcome after a lost COMMIT; make the unit idempotent"
            " (a unique key on a request id) and check before re-running instead"
        )


def _read_ok_reply(my: Any, driver: Any, is_async: bool, timeout: float) -> None:
    """The OK packet of a ROLLBACK sent earlier (PyMySQL / aiomysql): read at once when it has
    arrived (the common case), else waited for at most ``timeout`` (capped by the deadline)."""
    if my.rollback_reply_ready(driver):
        if is_async:
            await_only(my.read_rollback_reply_async(driver))
        else:
            _read_ok_cut_after(my, driver, _wait_bound(timeout)[0])
        return
    bound, by_deadline = _wait_bound(timeout)
    if is_async:
        # The transport owns the socket's reader callback: wait on aiomysql's StreamReader.
        # A timed-out read is cancelled, and aiomysql closes a connection cancelled mid-read.
        try:
            await_only(asyncio.wait_for(my.read_rollback_reply_async(driver), bound))
        except asyncio.TimeoutError:
            raise _NoReply(f"no reply within {bound:.2f}s", deadline=by_deadline) from None
        return
    fd = my.socket_fileno(driver)
    started = time.monotonic()
    if fd is None or bound <= 0 or not _readable(fd, bound, False):
        raise _NoReply(f"no reply within {bound:.2f}s", deadline=by_deadline)
    _read_ok_cut_after(my, driver, bound - (time.monotonic() - started))


def _read_ok_cut_after(my: Any, driver: Any, seconds: float) -> None:
    """PyMySQL's blocking read of the OK packet, under the backstop: "readable" only says the
    first bytes arrived, and PyMySQL's own read timeout is unset without a query_timeout, so a
    server that froze mid-packet would otherwise hold this read past the bound and the deadline
    (the cut socket fails the read: the connection is discarded)."""
    from poolguard.integrations.backstop import backstop

    fd = my.socket_fileno(driver)
    with backstop(-1 if fd is None else fd, None if fd is None else max(0.0, seconds)):
        my.read_rollback_reply(driver)


#: CR_CONN_HOST_ERROR: what a failed handshake is reported as (a connect-phase failure).
_CONNECT_FAILED = 2003
#: CR_SERVER_LOST: PyMySQL/aiomysql's "lost connection" while reading the handshake.
_LOST = 2013


def _handshake_failed(exc: Exception, timeout: float | None) -> Exception:
    """A connection lost (or timed out) during the handshake is a failed *connect*, not a lost
    query: report it as 2003 so it is retried as connect-phase (breaker-counted) and a timeout
    surfaces as ConnectTimeout, not QueryTimeout."""
    import pymysql

    if not exc.args or exc.args[0] != _LOST:
        return exc
    why = (
        f"handshake timed out after {timeout}s"
        if "timed out" in str(exc)
        else "connection lost during the handshake"
    )
    failed: Exception = pymysql.err.OperationalError(
        _CONNECT_FAILED, f"Can't connect to MySQL server ({why})"
    )
    return failed


def _pymysql_connect(
    cargs: Any, cparams: dict[str, Any], *, timeout: float | None, keepalive: float | None
) -> Any:
    """PyMySQL connect whose TCP connect *and* handshake reads are bounded by ``timeout``.

    PyMySQL bounds the TCP connect by ``connect_timeout`` but reads the handshake under
    ``read_timeout`` (unset = forever: a frozen server hangs the connect). So connect with the
    read/write timeouts set to the connect budget, then restore the configured ones.
    """
    import pymysql

    conn = pymysql.connect(*cargs, defer_connect=True, **cparams)
    saved = conn._read_timeout, conn._write_timeout
    if timeout is not None:
        conn.connect_timeout = timeout
        conn._read_timeout = conn._write_timeout = timeout
    try:
        conn.connect()
    except pymysql.err.OperationalError as exc:
        failed = _handshake_failed(exc, timeout)
        if failed is exc:
            raise  # not a handshake failure: as it was (an error must not be its own cause)
        raise failed from exc
    finally:
        conn._read_timeout, conn._write_timeout = saved
    if keepalive and conn._sock is not None:
        from poolguard.backends.mysql import set_keepalive

        set_keepalive(conn._sock, keepalive)
    return conn


async def _aiomysql_connect(
    *args: Any, timeout: float | None, keepalive: float | None, **kwargs: Any
) -> Any:
    """aiomysql connect with the whole handshake under ``timeout`` (aiomysql bounds only the TCP
    connect). aiomysql cancels cleanly: no server-side cancel to wait for."""
    import aiomysql
    import pymysql

    from poolguard.backends.mysql import raw_socket, set_keepalive

    async def open_() -> Any:
        return await aiomysql.connect(*args, **kwargs)

    try:
        conn = await asyncio.wait_for(open_(), timeout)
    except asyncio.TimeoutError:
        raise pymysql.err.OperationalError(
            _CONNECT_FAILED, f"Can't connect to MySQL server (timed out after {timeout:.2f}s)"
        ) from None
    except pymysql.err.OperationalError as exc:
        failed = _handshake_failed(exc, timeout)
        if failed is exc:
            raise  # not a handshake failure: as it was (an error must not be its own cause)
        raise failed from exc
    if keepalive:
        sock = raw_socket(conn)
        if sock is not None:
            set_keepalive(sock, keepalive)
    return conn


_Factory = Callable[[float], SqlBackend]
_FACTORIES: dict[Dialect, _Factory] = {
    "postgresql": lambda _grace: PostgresBackend(),
    "mysql": MySQLBackend,
}


def backend_for(dialect: Dialect, *, backstop_grace: float, driver: str = "") -> SqlBackend:
    """The adapter for a URL's dialect (``dialect_of(url)``) and driver."""
    if driver == "asyncpg":
        from poolguard.integrations.sqlalchemy._asyncpg import AsyncpgBackend

        return AsyncpgBackend()
    return _FACTORIES[dialect](backstop_grace)
