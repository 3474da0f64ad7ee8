"""A replicated PostgreSQL topology: one primary and one or two streaming standbys.

:class:`PgReplicaSet` starts a :class:`PostgresServer` as primary and clones each standby from
it with ``pg_basebackup -R`` (a :class:`PostgresStandby`, hot standby, streaming). Failover
is what an HA manager (Patroni, RDS Multi-AZ) does, done by hand and on demand:

- :meth:`PgReplicaSet.stop_primary` (clean stop, or ``crash=True``: SIGKILL) or
  :meth:`PgReplicaSet.make_read_only` (the old primary stays up but refuses writes, as a
  demoted primary or a fenced one does);
- :meth:`PgReplicaSet.promote` (``pg_promote()``; the other standby, if any, is pointed at the
  new primary and follows it onto the new timeline);
- :meth:`PgReplicaSet.discard` (the old primary is gone for good) or :meth:`PgReplicaSet.rejoin`
  (cloned again from the new primary, on its old port, as a standby: simpler and surer than
  ``pg_rewind``, and what Patroni falls back to);
- :meth:`PgReplicaSet.multi_host_url`: ``postgresql://app:pw@h:p1,h:p2/app?target_session_attrs=
  read-write``, optionally through other ports (a :class:`FaultProxy` per server).

``synchronous=True`` (the default) makes the primary wait for one standby's flush before it
acknowledges a COMMIT (``synchronous_standby_names = '*'``): an acknowledged transaction
survives a crash of the primary followed by a promotion. With asynchronous replication the
last acknowledged commits may be lost in a failover: no client library can prevent that.

Like :class:`PostgresServer`, everything runs as the ``postgres`` system user when the tests
run as root. Measured on the dev machine (2 shared cores): primary + one standby ready in
about 2 s.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from poolguard.testing.servers._base import ServerError, ServerStartError
from poolguard.testing.servers.postgres import PostgresServer

__all__ = ["PgReplicaSet", "PostgresStandby"]

#: What the primary needs so that standbys can stream from it (and ``rejoin`` re-clone).
PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    # A standby reconnects to its primary quickly after a failover (default 5 s).
    "wal_retrieve_retry_interval": "200ms",
    "wal_receiver_status_interval": "1s",
}
SYNC_SETTING = "synchronous_standby_names"
#: How long promote() and wait_replayed() wait for the server to reach the state asked for.
SETTLE_TIMEOUT = 30.0
_POLL = 0.02


class PostgresStandby(PostgresServer):
    """A hot standby cloned from ``upstream`` by ``pg_basebackup -R`` at its first start.

    Same roles and passwords as the upstream (they are in the cloned catalog). After
    :meth:`PgReplicaSet.promote` it is a primary like any other.
    """

    def __init__(self, upstream: PostgresServer, **kwargs: Any) -> None:
        kwargs.setdefault("user", upstream.user)
        kwargs.setdefault("password", upstream.password)
        kwargs.setdefault("database", upstream.database)
        # Not the primary's synchronous_standby_names (postgresql.auto.conf, cloned): a promoted
        # standby with no standby of its own would wait forever for one at each COMMIT
        # (PgReplicaSet.promote sets it when another standby follows).
        kwargs.setdefault("config", upstream.config)
        super().__init__(**kwargs)
        self.admin_password = upstream.admin_password
        self.upstream = upstream

    def _initialize(self) -> None:
        self._clone(self.upstream)

    def _clone(self, source: PostgresServer) -> None:
        """``pg_basebackup -R``: the data dir of ``source``, set up to stream from it."""
        env = self._child_env()
        env["PGPASSWORD"] = source.admin_password  # never on the command line (ps shows it)
        self._run(
            [
                str(self.bindir / "pg_basebackup"),
                "-D", str(self.data_dir),
                "-h", source.host,
                "-p", str(source.port),
                "-U", source.admin_user,
                "-R",  # standby.signal + primary_conninfo
                "-X", "stream",
                "--checkpoint=fast",  # no wait for the next scheduled checkpoint
                "--no-sync",
            ],
            env=env,
        )  # fmt: skip
        # Not the primary's synchronous_standby_names (ALTER SYSTEM, so cloned with the rest):
        # a promoted standby with no standby of its own would wait forever at each COMMIT
        # (PgReplicaSet.promote sets it again when another standby follows).
        auto = self.data_dir / "postgresql.auto.conf"
        lines = auto.read_text().splitlines(keepends=True)
        auto.write_text("".join(x for x in lines if not x.startswith(SYNC_SETTING)))

    def _bootstrap(self) -> None:
        pass  # roles and database came with the clone

    def _is_ready(self) -> bool:
        # A hot standby writes "standby" where a primary writes "ready" (postmaster.pid line 8).
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self.pid)
            and lines[7].strip() in ("ready", "standby")
        )


class PgReplicaSet:
    """A primary and ``standbys`` streaming standbys on free loopback ports (see module doc).

    ``servers`` keeps the start order (the original primary first) and ``primary`` follows
    promotions. ``url`` / ``admin_url`` of each server are :class:`PostgresServer`'s.
    """

    def __init__(
        self,
        standbys: int = 1,
        *,
        synchronous: bool = True,
        config: Mapping[str, str] | None = None,
        **server_options: Any,
    ) -> None:
        if standbys not in (1, 2):
            raise ValueError(f"standbys must be 1 or 2, not {standbys!r}")
        settings = {**PRIMARY_SETTINGS, **(config or {})}
        self.primary: PostgresServer = PostgresServer(config=settings, **server_options)
        self._standby_count = standbys
        self._synchronous = synchronous
        self.servers: list[PostgresServer] = [self.primary]
        self.former_primary: PostgresServer | None = None
        """The primary before the last :meth:`promote`."""
        self.startup_seconds = 0.0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PgReplicaSet:
        started = time.monotonic()
        try:
            self.primary.start()
            for _ in range(self._standby_count):
                standby = PostgresStandby(self.primary)
                self.servers.append(standby)
                standby.start()
            self.wait_streaming()
            if self._synchronous:
                # Only now: until a standby streams, every COMMIT (CREATE ROLE...) would wait.
                self._set_synchronous(self.primary)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> PgReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def standbys(self) -> list[PostgresServer]:
        return [s for s in self.servers if s is not self.primary]

    # --- failover ------------------------------------------------------------------------------
    def stop_primary(self, *, crash: bool = False) -> PostgresServer:
        """Stop the primary (``crash=True``: SIGKILL, no shutdown checkpoint, sockets reset by
        the kernel). Its data dir stays, for :meth:`rejoin`; returns the old primary."""
        old = self.primary
        if crash:
            old._shutdown(graceful=False)
        else:
            old.thaw()
            old._shutdown(graceful=True)
        return old

    def make_read_only(self, server: PostgresServer | None = None) -> None:
        """The server keeps running but refuses writes from now on (25006 for new
        transactions): ``default_transaction_read_only`` + ending the sessions' open
        transactions is what a fenced or demoted primary looks like to a client."""
        target = server or self.primary
        target.psql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();")

    def promote(self, standby: PostgresServer | None = None) -> PostgresServer:
        """Promote ``standby`` (the first standby by default), wait until it accepts writes,
        point any other standby at it; returns the new primary."""
        new = standby or self.standbys[0]
        if not isinstance(new, PostgresStandby) or new not in self.servers:
            raise ServerError(f"{new!r} is not a standby of this set")
        new.psql("SELECT pg_promote(wait => true, wait_seconds => 30);")
        _wait_until(lambda: new.psql("SELECT pg_is_in_recovery();") == "f", "promotion")
        old = self.primary
        self.primary = new
        self.former_primary = old
        followers = [s for s in self.standbys if s is not old and s.running]
        for other in followers:
            self._follow(other, new)
        if followers and self._synchronous:
            self._set_synchronous(new)
        return new

    @staticmethod
    def _set_synchronous(server: PostgresServer) -> None:
        # ALTER SYSTEM, not the command line (-c would win over postgresql.auto.conf for good).
        server.psql(f"ALTER SYSTEM SET {SYNC_SETTING} = '*'; SELECT pg_reload_conf();")

    def discard(self, server: PostgresServer | None = None) -> None:
        """Stop and forget ``server`` (the former primary by default) after a promotion."""
        target = server or self._old_primary()
        target.stop()
        if target in self.servers:
            self.servers.remove(target)

    def rejoin(self, server: PostgresServer | None = None) -> PostgresStandby:
        """Make the old primary a standby of the current primary, on its old port: a fresh
        clone (``pg_basebackup -R``) of the new primary. Returns its replacement object."""
        old = server or self._old_primary()
        port = old.port
        old.stop()
        standby = PostgresStandby(self.primary, port=port)
        index = self.servers.index(old)
        self.servers[index] = standby
        self.former_primary = None
        standby.start()
        return standby

    def _old_primary(self) -> PostgresServer:
        if self.former_primary is None or self.former_primary not in self.servers:
            raise ServerError("no former primary in this set: promote() first")
        return self.former_primary

    def _follow(self, standby: PostgresServer, new_primary: PostgresServer) -> None:
        conninfo = (
            f"host={new_primary.host} port={new_primary.port} user={new_primary.admin_user} "
            f"password={new_primary.admin_password}"
        )
        standby.psql(
            "ALTER SYSTEM SET primary_conninfo = " + _literal(conninfo) + ";\n"
            "SELECT pg_reload_conf();"
        )

    # --- waiting -------------------------------------------------------------------------------
    def wait_streaming(self) -> None:
        """Until every running standby is connected to the primary (pg_stat_replication)."""
        want = sum(1 for s in self.standbys if s.running)
        _wait_until(
            lambda: (
                int(
                    self.primary.psql(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                    )
                    or 0
                )
                >= want
            ),
            "standbys streaming",
        )

    def wait_replayed(self, standby: PostgresServer | None = None) -> None:
        """Until ``standby`` (each by default) replayed everything the primary wrote so far."""
        lsn = self.primary.psql("SELECT pg_current_wal_lsn();")
        sql = f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn;"
        for server in [standby] if standby else self.standbys:
            _wait_until(functools.partial(_says_true, server, sql), "standby replay")

    # --- URLs ----------------------------------------------------------------------------------
    def multi_host_url(
        self,
        target_session_attrs: str | None = "read-write",
        *,
        servers: Sequence[PostgresServer] | None = None,
        addresses: Sequence[tuple[str, int]] | None = None,
        scheme: str = "postgresql",
    ) -> str:
        """One URL listing several hosts, as libpq takes it: ``h:p1,h:p2``.

        ``servers`` (default: all, start order) or explicit ``addresses`` (host, port), e.g.
        fault proxies in front of them.
        """
        if addresses is None:
            addresses = [(s.host, s.port) for s in (servers or self.servers)]
        first = self.servers[0]
        hosts = ",".join(f"{host}:{port}" for host, port in addresses)
        auth = f"{quote(first.user, safe='')}:{quote(first.password, safe='')}"
        query = f"?target_session_attrs={target_session_attrs}" if target_session_attrs else ""
        return f"{scheme}://{auth}@{hosts}/{first.database}{query}"

    def __repr__(self) -> str:
        roles = ", ".join(
            f"{'primary' if s is self.primary else 'standby'}:{s.port}" for s in self.servers
        )
        return f"<PgReplicaSet {roles}>"


def _wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            if check():
                return
        except ServerError:
            pass  # the server is still starting or restarting
        if time.monotonic() > deadline:
            raise ServerStartError(f"{what}: not reached within {SETTLE_TIMEOUT:.0f} s")
        time.sleep(_POLL)


def _says_true(server: PostgresServer, sql: str) -> bool:
    return server.psql(sql) == "t"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
