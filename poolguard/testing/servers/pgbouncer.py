"""A throwaway PgBouncer in front of a :class:`PostgresServer` (transaction pooling by default).

:class:`PgBouncerServer`; the lifecycle and chaos methods are :class:`LocalServer`'s
(``_base.py``: ``restart()`` restarts the PgBouncer process), the PostgreSQL behind it is
``postgres.py``. PgBouncer's own operations are methods here: :meth:`PgBouncerServer.pause` /
:meth:`~PgBouncerServer.resume` and :meth:`~PgBouncerServer.reconnect` (admin console).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Any

from poolguard.testing.servers._base import LocalServer, ServerError, ServerStartError, url
from poolguard.testing.servers._system import HOST, binary_version, find_binary, unix_accepts
from poolguard.testing.servers.postgres import PostgresServer

__all__ = ["PgBouncerServer"]

INSTALL = "apt-get install -y pgbouncer"
ADMIN_USER = "pgbouncer_admin"
POOL_MODES = ("session", "transaction", "statement")
#: How long :meth:`PgBouncerServer.pause` waits for SHOW DATABASES to report the pause.
PAUSE_SETTLE = 5.0
#: SHOW DATABASES columns: name|host|port|database|force_user|pool_size|min_pool_size|
#: reserve_pool|pool_mode|max_connections|current_connections|paused|disabled (1.18).
_PAUSED_COLUMN = 11


class PgBouncerServer(LocalServer):
    """PgBouncer on a free loopback port, forwarding database ``app`` to ``upstream``.

    ``url`` logs in as the upstream's ``app`` user; ``admin_url`` reaches PgBouncer's admin
    console (database ``pgbouncer``: ``SHOW POOLS``, ``KILL``, ``PAUSE`` ...). The upstream is
    not owned: start and stop it yourself.
    """

    kind = "pgbouncer"
    scheme = "postgresql"
    system_user = "postgres"  # PgBouncer refuses to run as root
    install_hint = INSTALL
    binary: str

    def __init__(
        self, upstream: PostgresServer, pool_mode: str = "transaction", **kwargs: Any
    ) -> None:
        kwargs.setdefault("password", upstream.password)
        kwargs.setdefault("user", upstream.user)
        kwargs.setdefault("database", upstream.database)
        super().__init__(**kwargs)
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, not {pool_mode!r}")
        self.upstream = upstream
        self.pool_mode = pool_mode
        self._pausing: subprocess.Popen[bytes] | None = None

    def _locate_binaries(self) -> None:
        self.binary = find_binary(["pgbouncer"], INSTALL)

    @property
    def url(self) -> str:
        return url("postgresql", self.user, self.password, self.host, self.port, self.database)

    @property
    def admin_url(self) -> str:
        return url("postgresql", ADMIN_USER, self.admin_password, self.host, self.port, "pgbouncer")

    def _initialize(self) -> None:
        assert self.base_dir is not None
        if not self.upstream.running:
            raise ServerStartError("PgBouncerServer: start the upstream PostgresServer first")
        userlist = self.base_dir / "userlist.txt"
        userlist.write_text(
            f'"{self.user}" "{self.password}"\n"{ADMIN_USER}" "{self.admin_password}"\n'
        )
        settings = {
            "listen_addr": HOST,
            "listen_port": str(self.port),
            "unix_socket_dir": str(self.base_dir),
            "auth_type": "md5",
            "auth_file": str(userlist),
            "admin_users": ADMIN_USER,
            "pool_mode": self.pool_mode,
            "max_client_conn": "500",
            "default_pool_size": "20",
            # Tests restart the upstream: retry server logins quickly instead of every 15 s.
            "server_login_retry": "1",
            # As most deployments do (JDBC sends it). ``options`` is *not* ignored, so a client
            # sending ``options=-c ...`` fails here as in production (see DESIGN's traps).
            "ignore_startup_parameters": "extra_float_digits",
            **self.config,
        }
        pgbouncer = "\n".join(f"{key} = {value}" for key, value in settings.items())
        up = self.upstream
        (self.base_dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.database} = host={up.host} port={up.port} dbname={up.database}\n"
            f"\n[pgbouncer]\n{pgbouncer}\n"
        )
        for path in (userlist, self.base_dir / "pgbouncer.ini"):
            self._chown(path)
            path.chmod(0o600)

    def _command(self) -> list[str]:
        assert self.base_dir is not None
        return [self.binary, str(self.base_dir / "pgbouncer.ini")]

    def _is_ready(self) -> bool:
        assert self.base_dir is not None
        if not unix_accepts(self.base_dir / f".s.PGSQL.{self.port}"):
            return False
        # PgBouncer only warns when the TCP bind fails and goes on with its Unix socket alone.
        if "cannot listen on" in self.log_tail():
            raise ServerStartError(
                f"pgbouncer: port {self.port} already in use:\n{self.log_tail()}"
            )
        return True

    def _psql(self, command: str) -> tuple[list[str], dict[str, str]]:
        env = self._child_env()
        env["PGPASSWORD"] = self.admin_password
        argv = [str(self.upstream.bindir / "psql"), "-X", "-At", "-h", self.host]
        argv += ["-p", str(self.port), "-U", ADMIN_USER, "-d", "pgbouncer", "-c", command]
        return argv, env

    def admin(self, command: str) -> str:
        """Run one admin-console command (``SHOW CLIENTS``, ``KILL app`` ...) through psql."""
        argv, env = self._psql(command)
        return self._run(argv, as_server_user=False, env=env, timeout=30).strip()

    # --- PgBouncer's own operations (admin console) ------------------------------------------
    def pause(self) -> None:
        """``PAUSE`` the database: PgBouncer holds every new query (and, in session pooling,
        every new login) until :meth:`resume`; transactions already running finish.

        PgBouncer answers PAUSE only once every server connection is released, which under
        session pooling waits for the clients to disconnect. So the command is left running,
        and this returns as soon as ``SHOW DATABASES`` reports the database paused.
        """
        self._require_started()
        if self._pausing is not None:
            raise ServerError("pgbouncer is already paused: resume() first")
        argv, env = self._psql(f"PAUSE {self.database}")
        self._pausing = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + PAUSE_SETTLE
        while not self.paused:
            if time.monotonic() > end:
                self.resume()
                raise ServerError(f"PAUSE {self.database} not reported within {PAUSE_SETTLE} s")
            time.sleep(0.02)

    @property
    def paused(self) -> bool:
        """``SHOW DATABASES`` reports the database paused."""
        for line in self.admin("SHOW DATABASES").splitlines():
            fields = line.split("|")
            if fields[0] == self.database:
                return fields[_PAUSED_COLUMN] == "1"
        return False

    def resume(self) -> None:
        """``RESUME`` what :meth:`pause` held (the pending PAUSE command is ended)."""
        pausing, self._pausing = self._pausing, None
        try:
            self.admin(f"RESUME {self.database}")
        finally:
            if pausing is not None:
                with contextlib.suppress(ProcessLookupError):
                    pausing.kill()
                pausing.wait()

    def reconnect(self) -> None:
        """``RECONNECT``: close each server connection once its client releases it (PgBouncer
        >= 1.8), as after a change of the upstream's address. Clients see no error."""
        self.admin(f"RECONNECT {self.database}")

    def stop(self) -> None:
        if self._pausing is not None:
            with contextlib.suppress(ProcessLookupError):
                self._pausing.kill()
            self._pausing.wait()
            self._pausing = None
        super().stop()

    def _kill_sessions(self, application_name: str | None) -> int:
        if application_name is not None:
            raise ValueError("PgBouncer can only kill a whole database's clients")
        clients = [
            line
            for line in self.admin("SHOW CLIENTS").splitlines()
            if line.split("|")[1:3] == [self.user, self.database]  # type|user|database|...
        ]
        # KILL drops the database's client and server connections; RESUME lets new ones in.
        self.admin(f"KILL {self.database}")
        self.admin(f"RESUME {self.database}")
        return len(clients)

    def _read_version(self) -> str:
        return binary_version(self.binary)
