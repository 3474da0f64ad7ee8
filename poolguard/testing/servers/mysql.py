"""A throwaway MariaDB (or MySQL-named binaries): install-db into a temp dir, user ``app``.

:class:`MySQLServer`; the lifecycle and chaos methods are :class:`LocalServer`'s (``_base.py``).
"""

from __future__ import annotations

from typing import ClassVar

from poolguard.testing.servers._base import LocalServer, ServerError, url
from poolguard.testing.servers._system import binary_version, find_binary, unix_accepts

__all__ = ["MySQLServer"]

INSTALL = "apt-get install -y mariadb-server mariadb-client"

# Small InnoDB, no fsync at commit, no binlog: starts in about a second.
BASE_OPTIONS: dict[str, str] = {
    "bind-address": "127.0.0.1",
    "skip-name-resolve": "",
    "skip-log-bin": "",
    "innodb-buffer-pool-size": "32M",
    "innodb-log-file-size": "16M",
    # 2: the log is written to the OS at each commit (fsynced once a second), so acknowledged
    # commits survive a SIGKILL of mariadbd; 0 would lose up to a second of them.
    "innodb-flush-log-at-trx-commit": "2",
    "innodb-doublewrite": "0",
    "innodb-flush-method": "nosync",
    "max-connections": "300",
    "performance-schema": "OFF",
}

# Hosts an ``app`` login can come from. Over TCP with skip-name-resolve the client is 127.0.0.1;
# 'localhost' is for the socket; '%' for anything else. Anonymous users would shadow '%'.
APP_HOSTS = ("%", "localhost", "127.0.0.1")


class MySQLServer(LocalServer):
    """MariaDB on a free loopback port; ``url`` logs in as ``app`` to database ``app``.

    ``admin_url`` is ``root`` over TCP with a password (``'root'@'127.0.0.1'``).
    """

    kind = "mysql"
    scheme = "mysql"
    system_user = "mysql"
    install_hint = INSTALL
    admin_user: ClassVar[str] = "root"
    server_binary: str
    install_db: str
    client: str

    def _locate_binaries(self) -> None:
        dirs = ["/usr/sbin", "/usr/libexec", "/usr/bin"]
        self.server_binary = find_binary(["mariadbd", "mysqld"], INSTALL, dirs=dirs)
        self.install_db = find_binary(
            ["mariadb-install-db", "mysql_install_db"], INSTALL, dirs=dirs
        )
        self.client = find_binary(["mariadb", "mysql"], INSTALL)

    @property
    def socket_path(self) -> str:
        assert self.base_dir is not None
        return str(self.base_dir / "mysqld.sock")

    @property
    def url(self) -> str:
        return url("mysql", self.user, self.password, self.host, self.port, self.database)

    @property
    def admin_url(self) -> str:
        return url("mysql", self.admin_user, self.admin_password, self.host, self.port, "mysql")

    def _initialize(self) -> None:
        assert self.base_dir is not None
        # 'normal' leaves root@localhost without a password (set in _bootstrap); the default,
        # unix_socket auth, would tie root to the OS user that installed the data dir.
        self._run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.base_dir / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--innodb-flush-method=nosync",
                "--innodb-doublewrite=0",
            ],
            timeout=120,
        )

    def _command(self) -> list[str]:
        assert self.base_dir is not None
        options = {
            **BASE_OPTIONS,
            "datadir": str(self.base_dir / "data"),
            "port": str(self.port),
            "socket": self.socket_path,
            "pid-file": str(self.base_dir / "mysqld.pid"),
            "tmpdir": str(self.base_dir),
            **self.config,
        }
        return [
            self.server_binary,
            "--no-defaults",
            *(f"--{k}={v}" if v else f"--{k}" for k, v in options.items()),
        ]

    def _is_ready(self) -> bool:
        # mariadbd opens its socket after binding the TCP port, and exits if that bind fails.
        return unix_accepts(self.socket_path)

    def sql(self, sql: str, *, password: str | None = None) -> str:
        """Run SQL as root over the socket; return tab-separated rows without headers."""
        env = self._child_env()
        env["MYSQL_PWD"] = self.admin_password if password is None else password
        return self._run(
            [
                self.client,
                "--no-defaults",
                "--protocol=socket",
                f"--socket={self.socket_path}",
                f"--user={self.admin_user}",
                "--batch",
                "--skip-column-names",
            ],
            as_server_user=False,
            input=sql.encode(),
            env=env,
            timeout=30,
        ).strip()

    def _bootstrap(self) -> None:
        anonymous = self.sql("SELECT host FROM mysql.user WHERE user = '';", password="")
        statements = [f"DROP USER ''@'{host}';" for host in anonymous.splitlines() if host]
        for host in APP_HOSTS:
            statements += [
                f"CREATE OR REPLACE USER '{self.user}'@'{host}' IDENTIFIED BY '{self.password}';",
                f"GRANT ALL ON `{self.database}`.* TO '{self.user}'@'{host}';",
            ]
        pw = self.admin_password
        statements += [
            f"CREATE DATABASE `{self.database}`;",
            f"CREATE OR REPLACE USER '{self.admin_user}'@'127.0.0.1' IDENTIFIED BY '{pw}';",
            f"GRANT ALL ON *.* TO '{self.admin_user}'@'127.0.0.1' WITH GRANT OPTION;",
            f"ALTER USER '{self.admin_user}'@'localhost' IDENTIFIED BY '{pw}';",
            "FLUSH PRIVILEGES;",
        ]
        self.sql("\n".join(statements), password="")

    def _kill_sessions(self, application_name: str | None) -> int:
        if application_name is not None:
            # MariaDB's processlist has no client-chosen name (only performance_schema's
            # connect attributes, off here to keep startup small).
            raise ValueError("MariaDB sessions have no application_name; kill by user instead")
        ids = self.sql(
            "SELECT id FROM information_schema.PROCESSLIST "
            f"WHERE user = '{self.user}' AND id <> CONNECTION_ID();"
        ).split()
        if not ids:
            return 0
        killed = 0
        for thread_id in ids:
            try:
                self.sql(f"KILL CONNECTION {int(thread_id)};")
                killed += 1
            except ServerError:  # gone in the meantime ("Unknown thread id")
                pass
        return killed

    def _read_version(self) -> str:
        return binary_version(self.server_binary, r"Ver\s+(\d+(?:\.\d+)+)")
