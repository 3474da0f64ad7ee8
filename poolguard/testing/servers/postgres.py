"""A throwaway PostgreSQL cluster: initdb in a temp dir, role and database ``app``.

:class:`PostgresServer`; the lifecycle and chaos methods are :class:`LocalServer`'s (``_base.py``).
No fsync, for start-up speed; an acknowledged commit still survives ``restart(crash=True)``.
"""

from __future__ import annotations

import functools
import re
import signal
import subprocess
from pathlib import Path

from poolguard.testing.servers._base import LocalServer, url
from poolguard.testing.servers._system import ServerUnavailable, binary_version, find_binary

__all__ = ["PostgresServer", "postgres_bindir"]

INSTALL = "apt-get install -y postgresql"

# No fsync and small buffers: a test cluster starts in about a second and never waits on disk.
# synchronous_commit stays on: a commit's WAL then reaches the OS before the client hears OK, so
# an acknowledged commit survives restart(crash=True) (a SIGKILL, not a power cut).
# max_connections is high because pool tests open many connections at once.
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

# pg_stat_activity rows that are clients' sessions, never the admin's own.
_KILL_SQL = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid{wait}))
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND {filter};
"""


@functools.lru_cache(maxsize=1)
def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/*/bin, else ``pg_config --bindir``, else PATH's initdb."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0],
    )
    if candidates:
        return candidates[-1].parent
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        if (Path(out) / "postgres").exists():
            return Path(out)
    except (OSError, subprocess.SubprocessError):
        pass
    return Path(find_binary(["initdb"], INSTALL)).resolve().parent


class PostgresServer(LocalServer):
    """PostgreSQL on a free loopback port; ``url`` logs in as ``app`` to database ``app``."""

    kind = "postgres"
    scheme = "postgresql"
    system_user = "postgres"
    # SIGINT is PostgreSQL's *fast* shutdown: SIGTERM would wait for every client to leave.
    stop_signal = signal.SIGINT
    install_hint = INSTALL
    admin_user = "postgres"

    bindir: Path

    def _locate_binaries(self) -> None:
        self.bindir = postgres_bindir()
        if not (self.bindir / "initdb").exists():
            raise ServerUnavailable("PostgreSQL (initdb)", INSTALL)

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir

    @property
    def url(self) -> str:
        return url("postgresql", self.user, self.password, self.host, self.port, self.database)

    @property
    def admin_url(self) -> str:
        return url(
            "postgresql", self.admin_user, self.admin_password, self.host, self.port, "postgres"
        )

    def _initialize(self) -> None:
        assert self.base_dir is not None
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        self._chown(pwfile)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.admin_user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        pwfile.unlink()

    def _command(self) -> list[str]:
        settings = {
            **BASE_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            **self.config,
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _is_ready(self) -> bool:
        # Line 8 of postmaster.pid turns to "ready" once connections are accepted; the TCP port
        # opens earlier, while the server still answers "the database system is starting up".
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # After a crash the old file still says "ready": only trust the one our process wrote.
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket (trust auth); return unaligned rows."""
        return self._run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.admin_user,
                "-d",
                database,
            ],
            as_server_user=False,
            input=sql.encode(),
            timeout=30,
        ).strip()

    def _bootstrap(self) -> None:
        self.psql(
            f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';\n"
            f"CREATE DATABASE {self.database} OWNER {self.user};\n"
        )

    def _kill_sessions(self, application_name: str | None) -> int:
        if application_name is None:
            where = f"usename IS DISTINCT FROM '{self.admin_user}'"
        else:
            where = "application_name = " + _literal(application_name)
        # PostgreSQL >= 14 can wait for the backends to be gone, so the caller sees them dead.
        wait = ", 5000" if self._major() >= 14 else ""
        return int(self.psql(_KILL_SQL.format(wait=wait, filter=where)) or 0)

    def _major(self) -> int:
        return int(self.version.split(".")[0])

    def _read_version(self) -> str:
        return binary_version(str(self.bindir / "postgres"))


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
