"""The asyncpg adapter of the SQLAlchemy integration (``postgresql+asyncpg``, async engines only).

Everything dialect-neutral (pool, statement retries, backstop, ``run_transaction``) is shared
with psycopg; what differs is answered here, on ``poolguard.backends.asyncpg``'s knowledge:

- connect: ``asyncpg.connect`` under ``asyncio.wait_for`` (and asyncpg's own ``timeout``), the
  server timeouts in the startup packet (``server_settings``), the version-gated ones and the
  TCP keepalives applied before the connection is handed over; what fails while connecting is a
  connect-phase error (see ``backends/asyncpg.py``);
- state without a round trip: ``is_in_transaction()`` / ``is_closed()`` (asyncpg keeps the
  server's last ReadyForQuery status, and notices a dead peer while idle), the socket for the
  backstop from the transport;
- the checkout ping is one simple-query round trip on the asyncpg connection (SQLAlchemy's own
  ``ping()`` opens a transaction around it: three round trips);
- SQLAlchemy's per-connection codec setup (JSON, JSONB; inet when disabled) runs under the
  backstop with the connect timeout: asyncpg 0.30 introspects each type with a query
  (``TYPE_BY_OID``, ``timeout=None``), and a server frozen right after the handshake held that
  connect forever (measured: test_asyncpg_dropin past pytest-timeout's 300 s); asyncpg 0.31
  knows the ``pg_catalog`` types without a round trip (0.3 ms against a frozen server), so
  there the bound costs one backstop ticket per new connection;
- SQLAlchemy 2.0's adapter (before 2.1, checked: 2.0.30) translates neither a failed connect's
  asyncpg error nor ``InternalClientError`` into its DBAPI classes: the first reached the
  caller as a bare ``asyncpg`` error (not a ``DBAPIError``), the second escaped the statement
  retries (which catch ``DBAPIError``). Both are translated here as SQLAlchemy 2.1 does
  (``_adapt_dialect``);
- not here: the deferred ROLLBACK and the pipelined BEGIN of the psycopg adapter (both are
  libpq-level); SQLAlchemy's asyncpg adapter sends BEGIN itself before a transaction's first
  statement, and ``close()`` waits for its ROLLBACK.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from poolguard.errors import ConnectTimeout
from poolguard.integrations.backstop import backstop
from poolguard.integrations.sqlalchemy._backend import SqlBackend, StateView
from poolguard.integrations.sqlalchemy._compat import await_only

if TYPE_CHECKING:
    from poolguard.config.settings import Settings
    from poolguard.core.disposition import Classification

__all__ = ["AsyncpgBackend"]


class AsyncpgBackend(SqlBackend):
    """asyncpg under SQLAlchemy's ``postgresql+asyncpg`` dialect."""

    name = "postgres"  # the same server, the same stats and messages as psycopg
    setup_commits = True  # SQLAlchemy's asyncpg cursor opens a transaction around a statement
    ambiguous_hint = (
        "run it through poolguard.run_transaction_async(..., resolve_ambiguous=True) to have"
        " poolguard check the outcome on the server"
    )

    def __init__(self) -> None:
        from poolguard.backends import asyncpg as apg
        from poolguard.backends import postgres as pg

        self.apg = apg
        self.pg = pg
        self.retry_codes = frozenset(pg.RETRY_TRANSACTION_SQLSTATES)
        # Connections this adapter opened (their session setup is done): a user's creator's are
        # set up by the pool's connect event instead.
        self._set_up: weakref.WeakSet[Any] = weakref.WeakSet()
        #: The engine's DBAPI adapter when SQLAlchemy leaves a connect's errors untranslated
        #: (2.0): see :func:`as_dbapi_error`.
        self._untranslated_by: Any = None

    def classify(self, exc: BaseException) -> Classification:
        return self.apg.classify(exc)

    def error_code(self, exc: BaseException) -> str | None:
        return self.apg.sqlstate(exc)

    def is_idempotent(self, sql: str) -> bool:
        return self.pg.is_idempotent(sql)

    def connect_args(self, settings: Settings, *, is_async: bool) -> dict[str, Any]:
        return self.apg.connect_params(settings)

    def merge_connect_args(self, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        merged = {**ours, **theirs}
        if ours.get("server_settings") and theirs.get("server_settings"):
            # Both apply; for a setting given twice the user's wins.
            merged["server_settings"] = {**ours["server_settings"], **theirs["server_settings"]}
        return merged

    def connect(
        self,
        state: StateView,
        dialect_connect: Callable[..., Any],
        native: bool,
        cargs: list[Any],
        cparams: dict[str, Any],
    ) -> Any:
        try:
            return super().connect(state, dialect_connect, native, cargs, cparams)
        except Exception as exc:
            translated = as_dbapi_error(self._untranslated_by, exc)
            if translated is exc:
                raise
            raise translated from exc

    async def bounded_creator(
        self, state: StateView, creator: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await super().bounded_creator(state, creator, *args, **kwargs)
        except Exception as exc:
            # Raised inside the adapter's connect: SQLAlchemy 2.1 leaves a DBAPI error as is.
            translated = as_dbapi_error(self._untranslated_by, exc)
            if translated is exc:
                raise
            raise translated from exc

    def adapt_dialect(self, dialect: Any, state: StateView) -> None:
        _adapt_dialect(dialect, state, self.apg)
        if not _adapter_translates_connect_errors():
            self._untranslated_by = getattr(dialect, "loaded_dbapi", None)

    def async_connector(self, state: StateView) -> Callable[..., Any]:
        return functools.partial(self._connect, state, state.connect_timeout())

    async def _connect(
        self, state: StateView, timeout: float | None, *args: Any, **kwargs: Any
    ) -> Any:
        import asyncpg

        apg = self.apg
        if timeout is not None:
            kwargs.setdefault("timeout", timeout)  # asyncpg's own bound (default 60 s)
        settings = state.settings
        opened: list[Any] = []

        async def open_() -> Any:
            conn = await asyncpg.connect(*args, **kwargs)
            opened.append(conn)
            if settings.tcp_keepalive:
                apg.set_keepalive(conn, settings.tcp_keepalive)
            # Version-gated GUCs (transaction_timeout, client_connection_check_interval): an
            # unknown GUC in the startup packet is fatal, so they follow it (one round trip,
            # simple protocol, no transaction). None under PgBouncer.
            setup = self.pg.session_setup_sql(settings, apg.server_version(conn))
            if setup:
                await conn.execute(setup)
            return conn

        try:
            conn = await asyncio.wait_for(open_(), timeout)
        except asyncio.TimeoutError:
            _terminate(opened)
            raise apg.ConnectTimeoutError(
                f"connection timeout expired after {timeout or 0:.2f}s (client deadline)"
            ) from None
        except BaseException as exc:
            _terminate(opened)
            failed = _connect_error(apg, exc)
            if failed is exc:
                raise  # as it was (an error must not be its own cause)
            raise failed from exc
        self._set_up.add(conn)
        return conn

    def connect_timed_out(self, timeout: float | None) -> Exception:
        err: Exception = self.apg.ConnectTimeoutError(
            f"connection timeout expired after {timeout or 0:.2f}s (client deadline)"
        )
        return err

    def setup_sql(self, state: StateView, driver_conn: Any) -> str | None:
        state.server_version = self.apg.server_version(driver_conn)
        if state.pgbouncer or driver_conn in self._set_up:
            return None
        # A user's async_creator opened it: the server timeouts go in here instead.
        settings = state.settings
        gucs = {
            **self.pg.server_timeouts(settings),
            **self.pg._versioned_timeouts(settings, state.server_version),
        }
        return self.pg._set_config_sql(gucs, local=False)

    def ping(self, dbapi_connection: Any) -> bool:
        driver = _driver(dbapi_connection)
        await_only(driver.execute(self.apg.PING_SQL))
        return True

    def fileno(self, driver_conn: Any) -> int | None:
        return self.apg.fileno(driver_conn)

    def found_closed(self, driver_conn: Any) -> bool:
        return self.apg.is_closed(driver_conn)

    def is_idle(self, driver_conn: Any) -> bool | None:
        return self.apg.is_idle(driver_conn)

    def needs_reset(self, driver_conn: Any) -> bool | None:
        return self.apg.needs_reset(driver_conn)

    def local_timeouts_sql(self, state: StateView) -> str | None:
        if not state.pgbouncer:
            return None
        return self.pg.local_timeouts_sql(state.settings, state.server_version)


def _adapt_dialect(dialect: Any, state: StateView, apg: Any) -> None:
    """What this engine's dialect instance needs, installed once (its methods and its DBAPI
    module are looked up on the instance at call time; another engine's are untouched)."""
    if dialect is None or getattr(dialect, "_poolguard_adapted", False):
        return
    _bound_close(dialect)
    _bound_codec_setup(dialect, state, apg)
    translate_internal_client_errors(getattr(dialect, "loaded_dbapi", None))
    dialect._poolguard_adapted = True


# --- SQLAlchemy 2.0's untranslated errors -------------------------------------------------------


def translate_internal_client_errors(dbapi: Any) -> None:
    """Have the adapter translate ``InternalClientError`` like SQLAlchemy 2.1 does.

    SQLAlchemy 2.0's asyncpg adapter re-raises an error missing from its translation table as
    is, and ``InternalClientError`` is missing there: "cannot switch to state 15; another
    operation (2) is in progress" (a FATAL read while the connection was idle, see
    ``backends/asyncpg.py``) reached the caller untouched by the statement retries, which act on
    ``DBAPIError`` (measured: 4 errors in test_kills_concurrent's 50 ms kill storm, SQLAlchemy
    2.0.30). Translated, SQLAlchemy wraps it, ``handle_error`` classifies it (through
    ``__cause__``) and the connection is invalidated and replaced like any other disconnect.
    ``dbapi`` is this engine's own instance (``import_dbapi()`` runs per ``create_engine``)."""
    from asyncpg import exceptions as apg_errors

    table = getattr(dbapi, "_asyncpg_error_translate", None)
    if not isinstance(table, dict) or apg_errors.InternalClientError in table:
        return  # not SQLAlchemy's adapter (module=...), or SQLAlchemy 2.1+: translated already
    target = getattr(dbapi, "InternalClientError", None) or dbapi.InternalError
    # A memoized property: the instance attribute replaces the cached table.
    dbapi._asyncpg_error_translate = {**table, apg_errors.InternalClientError: target}


def _adapter_translates_connect_errors() -> bool:
    """SQLAlchemy 2.1's adapter translates a failed connect's errors itself."""
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

    adapter = sa_asyncpg.AsyncAdapt_asyncpg_connection
    return hasattr(adapter, "_handle_exception_no_connection")


def as_dbapi_error(dbapi: Any, exc: Exception) -> Exception:
    """``exc`` (a failed connect) as the adapter's DBAPI error, as SQLAlchemy 2.1 translates it.

    SQLAlchemy 2.0 does not translate a connect's errors: a wrong password reached the caller
    as ``asyncpg.InvalidPasswordError``, not the ``sqlalchemy.exc.DBAPIError`` every other
    failure is (nor what the same code raises with psycopg, or with SQLAlchemy 2.1). Errors
    the adapter would not translate (``OSError``, poolguard's own) are returned as they are; the
    asyncpg error stays reachable as ``__cause__`` for the classification."""
    table = getattr(dbapi, "_asyncpg_error_translate", None)
    error_cls = getattr(dbapi, "Error", None)
    if not isinstance(table, dict) or error_cls is None or isinstance(exc, error_cls):
        return exc
    for cls in type(exc).__mro__:
        target = table.get(cls)
        if target is not None:
            # SQLAlchemy 2.0's own message format for the errors it translates.
            translated: Exception = target(f"{type(exc)}: {exc}")
            translated.pgcode = translated.sqlstate = getattr(exc, "sqlstate", None)  # type: ignore[attr-defined]
            return translated
    return exc


# --- the codec setup of a new connection --------------------------------------------------------

#: The dialect's coroutines that its on-connect hook awaits for every new connection.
_CODEC_SETUP = (
    "setup_asyncpg_json_codec",
    "setup_asyncpg_jsonb_codec",
    "_disable_asyncpg_inet_codecs",
)


def _bound_codec_setup(dialect: Any, state: StateView, apg: Any) -> None:
    """Each codec setup of a new connection bounded by the connect timeout (see the module
    docstring): SQLAlchemy's on-connect hook runs before poolguard's session setup, outside
    the connect's own bound, and asyncpg 0.30 sends a query for each codec."""
    for name in _CODEC_SETUP:
        original = getattr(dialect, name, None)
        if original is not None:
            setattr(dialect, name, functools.partial(_bounded_setup, state, apg, original))


async def _bounded_setup(state: StateView, apg: Any, original: Any, dbapi_connection: Any) -> Any:
    limit = state.connect_timeout()
    fd = apg.fileno(_driver(dbapi_connection))
    with backstop(-1 if fd is None else fd, None if fd is None else limit) as ticket:
        try:
            result = await original(dbapi_connection)
        except Exception as exc:
            if ticket is None or not ticket.fired:
                raise
            raise _setup_cut(state, limit) from exc
    if ticket is not None and ticket.fired:
        raise _setup_cut(state, limit)  # done just as it was cut: the socket is gone anyway
    return result


def _setup_cut(state: StateView, limit: float | None) -> ConnectTimeout:
    # A connect timeout is connect-phase: retried within the caller's window.
    return ConnectTimeout(
        f"connected to {state.guard.target or 'the server'}, but SQLAlchemy's codec setup (an"
        f" asyncpg type query) got no reply within {limit or 0:.2f}s (server frozen or network"
        " down); the connection was discarded",
        hint="raise the connect timeout or the deadline if the server is slow",
    )


# --- closing ------------------------------------------------------------------------------------

#: How long closing a connection may wait for the server (asyncpg's close() sends Terminate and
#: waits for the server to hang up): plenty for a live server, little for a dead network.
CLOSE_TIMEOUT = 0.25


def _bound_close(dialect: Any) -> None:
    """Closing or discarding a connection waits at most :data:`CLOSE_TIMEOUT`, then aborts it.

    SQLAlchemy's asyncpg adapter closes an invalidated connection with ``close(timeout=2)`` and
    a pooled one with ``close()`` (no timeout): into a blackhole, a lifetime eviction at
    checkout held a caller 1 s past its 1 s deadline (measured: 2.0 s; psycopg 1.01 s), and an
    overflow connection returned to a full pool could wait forever. Installed on this engine's
    dialect instance only, once (``do_close`` / ``do_terminate`` are looked up on it)."""
    if dialect is None or getattr(dialect, "_poolguard_close_bounded", False):
        return
    dialect.do_close = _close
    dialect.do_terminate = _close
    dialect._poolguard_close_bounded = True


def _close(dbapi_connection: Any) -> None:
    from sqlalchemy.util.concurrency import in_greenlet

    driver = getattr(dbapi_connection, "_connection", None)
    if driver is None:  # not SQLAlchemy's asyncpg adapter: its own close
        dbapi_connection.close()
        return
    dbapi_connection._transaction = None  # closing ends it (the server rolls back)
    if driver.is_closed() or not in_greenlet():
        driver.terminate()  # (outside a greenlet: garbage collection, no awaiting)
        return
    try:
        await_only(asyncio.shield(driver.close(timeout=CLOSE_TIMEOUT)))
    except Exception:
        driver.terminate()  # no answer in time, or the connection failed meanwhile: abort it
    except BaseException:
        driver.terminate()
        raise


def _driver(dbapi_connection: Any) -> Any:
    raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
    return getattr(raw, "driver_connection", raw)


def _terminate(opened: list[Any]) -> None:
    for conn in opened:
        conn.terminate()


def _connect_error(apg: Any, exc: BaseException) -> BaseException:
    """What a failed connect is reported as: the server's own error when it gave a SQLSTATE
    (a wrong password must stay permanent), else a connect-phase :class:`ConnectFailedError`."""
    from asyncpg import exceptions as apg_errors

    connect_failed: type[BaseException] = apg.ConnectFailedError
    if not isinstance(exc, Exception) or isinstance(exc, connect_failed):
        return exc
    # 28P01, 3D000, 57P03, 53300...: the server said why, classified by SQLSTATE.
    server_said = isinstance(exc, apg_errors.PostgresError) and not isinstance(
        exc, apg_errors.PostgresConnectionError
    )
    lost = isinstance(exc, (OSError, apg_errors.InterfaceError, apg_errors.PostgresConnectionError))
    if lost and not server_said:
        return connect_failed(f"could not connect: {exc}")
    return exc
