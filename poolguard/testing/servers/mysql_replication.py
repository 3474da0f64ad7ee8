"""A MariaDB primary/replica pair (GTID replication) with a planned :meth:`switchover`.

:class:`MariaDBReplicaSet`: two :class:`ReplicatedMySQLServer` (``mysql.py``'s server with a
binlog and a ``server-id``) sharing the ``app`` credentials, so one URL works against either and
a proxy, VIP or DNS name can be moved from the old primary to the new one. The replica runs
``read_only=ON``: the ``app`` user (no ``READ ONLY ADMIN``/``SUPER``) gets 1290 there, as on a
demoted primary.

Setup: both servers start empty and identical (install-db, the same bootstrap), then each
forgets its own bootstrap binlog (``RESET MASTER``), and the replica follows the primary with
``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos``: nothing from before that point needs to
replicate.

:meth:`MariaDBReplicaSet.switchover` is the planned role change MariaDB's own tools do
(``mariadb-admin``-driven scripts, MaxScale's ``switchover``): the old primary goes
``read_only=ON``, the replica catches up (``MASTER_GTID_WAIT``), is promoted (``STOP SLAVE;
RESET SLAVE ALL; read_only=OFF``), and the old primary follows it as a replica
(``MASTER_USE_GTID=current_pos``), so a second switchover goes back.
"""

from __future__ import annotations

import time
from typing import Any

from poolguard.testing.servers._base import ServerError
from poolguard.testing.servers.mysql import MySQLServer

__all__ = ["MariaDBReplicaSet", "ReplicatedMySQLServer"]

REPL_USER = "repl"
#: How long :meth:`MariaDBReplicaSet.switchover` waits for the replica to catch up.
CATCH_UP_TIMEOUT = 30


class ReplicatedMySQLServer(MySQLServer):
    """:class:`MySQLServer` with a binary log, GTIDs and its own ``server-id``."""

    def __init__(self, server_id: int, *, read_only: bool = False, **kwargs: Any) -> None:
        config = {
            "server-id": str(server_id),
            "log-bin": "mysql-bin",
            "binlog-format": "ROW",
            "log-slave-updates": "ON",
            "read-only": "ON" if read_only else "OFF",
            # A replica must not start replicating from a stale position on its own at restart.
            "skip-slave-start": "",
            **kwargs.pop("config", {}),
        }
        super().__init__(config=config, **kwargs)
        self.server_id = server_id

    def _command(self) -> list[str]:
        # mysql.py's base options turn the binlog off (faster start): not here.
        return [arg for arg in super()._command() if arg != "--skip-log-bin"]

    def query_one(self, sql: str) -> str:
        """The first column of the first row of ``sql`` (as root), '' when no row."""
        out = self.sql(sql)
        return out.splitlines()[0].split("\t")[0] if out else ""


class MariaDBReplicaSet:
    """A started primary and replica; ``primary`` / ``replica`` swap at each :meth:`switchover`.

    ``url`` is the current primary's (the same credentials work on both servers).
    """

    def __init__(self, **server_options: Any) -> None:
        password = server_options.pop("password", None)
        self._repl_password = ""
        self.primary = ReplicatedMySQLServer(1, password=password, **server_options)
        self.replica = ReplicatedMySQLServer(
            2, read_only=True, password=self.primary.password, **server_options
        )
        self.switchovers = 0

    @property
    def servers(self) -> tuple[ReplicatedMySQLServer, ReplicatedMySQLServer]:
        return self.primary, self.replica

    @property
    def url(self) -> str:
        return self.primary.url

    def start(self) -> MariaDBReplicaSet:
        try:
            for server in self.servers:
                server.start()
            self._repl_password = self.primary.admin_password  # hex, no quoting needed
            for server in self.servers:
                server.sql(
                    "SET sql_log_bin = 0;"
                    f"CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{self._repl_password}';"
                    "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.*"
                    f" TO '{REPL_USER}'@'127.0.0.1';"
                    "RESET MASTER;"
                )
            self.replica.sql("SET GLOBAL gtid_slave_pos = '';")
            self._follow(self.replica, self.primary, "slave_pos")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> MariaDBReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _follow(self, replica: ReplicatedMySQLServer, primary: MySQLServer, gtid: str) -> None:
        replica.sql(
            f"CHANGE MASTER TO MASTER_HOST = '{primary.host}', MASTER_PORT = {primary.port},"
            f" MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{self._repl_password}',"
            f" MASTER_CONNECT_RETRY = 1, MASTER_USE_GTID = {gtid};"
            "START SLAVE;"
        )

    def wait_caught_up(self, timeout: float = CATCH_UP_TIMEOUT) -> None:
        """Return once the replica has applied everything the primary has binlogged."""
        position = self.primary.query_one("SELECT @@gtid_binlog_pos;")
        got = self.replica.query_one(f"SELECT MASTER_GTID_WAIT('{position}', {timeout});")
        if got != "0":
            status = self.replica.sql("SHOW SLAVE STATUS\\G")
            raise ServerError(
                f"replica did not reach {position!r} within {timeout} s:\n"
                f"{self.replica._redact(status)}"
            )

    def switchover(self) -> float:
        """Planned switchover; returns how long writes were refused (read_only to promoted)."""
        old, new = self.primary, self.replica
        started = time.monotonic()
        old.sql("SET GLOBAL read_only = ON;")  # app writes now fail with 1290 here
        self.wait_caught_up()
        new.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF;")
        refused = time.monotonic() - started
        self.primary, self.replica = new, old
        self._follow(old, new, "current_pos")
        self.switchovers += 1
        return refused

    def __repr__(self) -> str:
        return f"<MariaDBReplicaSet primary={self.primary!r} replica={self.replica!r}>"
