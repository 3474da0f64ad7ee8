"""What every local test server shares: temp dir, system user, process group, readiness, chaos.

A server is a real process (or a postmaster and its children) started in its own session, so one
``killpg`` reaches all of it: that is how :meth:`LocalServer.freeze` stops PostgreSQL's backends
too, and how :meth:`LocalServer.stop` leaves no stray process. Everything here is the standard
library only, so importing the pytest plugin stays cheap and never needs a database driver.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import quote

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

from poolguard.testing.servers._system import (
    HOST,
    free_port,
    tcp_accepts,
)

__all__ = ["LocalServer", "ServerError", "ServerStartError", "url"]

DEFAULT_STARTUP_TIMEOUT = 60.0
# A server that ignores its polite stop signal this long gets SIGKILL (whole process group).
STOP_GRACE = 10.0
POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 40
# Tries of a first start whose auto-picked port was taken meanwhile (parallel test runs).
PORT_ATTEMPTS = 3


class ServerError(RuntimeError):
    """A local test server, or a program run against it (initdb, a client), failed."""


class ServerStartError(ServerError):
    """The server was found but did not start (or did not become ready) in time."""


# Strong references: a started server nobody holds any more must still be stopped at exit.
_live: set[LocalServer] = set()


@atexit.register
def _stop_all() -> None:  # a crashed test run must not leave servers behind
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


class LocalServer(ABC):
    """A real server process on a free loopback port, in a temp dir removed by :meth:`stop`.

    Nothing runs until :meth:`start`. When the tests run as root, the server runs as
    :attr:`system_user` (PostgreSQL, MariaDB and PgBouncer refuse root) and the temp dir is
    chowned to it.
    """

    kind: ClassVar[str]  # "postgres", "mysql", "redis", "pgbouncer"
    scheme: ClassVar[str]
    system_user: ClassVar[str | None] = None
    stop_signal: ClassVar[int] = signal.SIGTERM
    install_hint: ClassVar[str]

    host: str = HOST

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        user: str = "app",
        database: str = "app",
        config: Mapping[str, str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        # 0 until the first start picks a free port; kept after stop() (for "refused" checks).
        self.port = port or 0
        self._auto_port = port is None
        self.user = user
        self.password = password if password is not None else _new_password()
        self.database = database
        self.config: dict[str, str] = dict(config or {})
        self.startup_timeout = startup_timeout
        self.admin_password = _new_password()
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._frozen = False
        self._initialized = False
        self._lock = threading.RLock()
        self._locate_binaries()

    # --- what each server defines --------------------------------------------------------
    @abstractmethod
    def _locate_binaries(self) -> None:
        """Find the programs (at construction); raise :class:`ServerUnavailable` if missing."""

    @abstractmethod
    def _initialize(self) -> None:
        """First start only, before launch: create the data dir, config files."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The argv of the server process."""

    def _is_ready(self) -> bool:
        return tcp_accepts(self.port)

    def _bootstrap(self) -> None:  # noqa: B027 - optional hook, most servers need it
        """First start only, once ready: create users and the database."""

    def _before_restart(self) -> None:  # noqa: B027 - optional hook
        """A clean restart is about to stop the server: make its data survive."""

    @abstractmethod
    def _kill_sessions(self, application_name: str | None) -> int: ...

    @abstractmethod
    def _read_version(self) -> str: ...

    @property
    @abstractmethod
    def url(self) -> str: ...

    @property
    @abstractmethod
    def admin_url(self) -> str: ...

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the server and wait until it accepts clients (bounded by ``startup_timeout``)."""
        with self._lock:
            if self.running:
                return self
            if self._initialized:
                self._launch()
                return self
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._first_start()
                    return self
                except ServerStartError as exc:
                    self.stop()
                    # Another process took the free port we picked before we bound it.
                    if not (self._auto_port and "already in use" in str(exc)):
                        raise
                    if attempt == PORT_ATTEMPTS:
                        raise
                    self.port = 0
                except BaseException:
                    self.stop()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def _first_start(self) -> None:
        _live.add(self)
        self._make_base_dir()
        if not self.port:
            self.port = free_port()
        self._initialize()
        self._initialized = True
        self._launch()
        self._bootstrap()

    def stop(self) -> None:
        """Stop the server (even frozen) and remove its temp dir; idempotent."""
        with self._lock:
            self._shutdown(graceful=True)
            _live.discard(self)
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
            self._initialized = False

    def restart(self, downtime: float = 0.0, *, crash: bool = False) -> None:
        """Stop, stay down ``downtime`` seconds, start again on the same port with the same data.

        ``crash=True`` SIGKILLs the whole process group instead of a clean shutdown (PostgreSQL
        then runs crash recovery on start; Redis loses what was written since the last clean
        restart). Also brings back a server whose process died.
        """
        with self._lock:
            if not self._initialized:
                raise ServerStartError(f"{self.kind} server was never started: call start()")
            if not crash:
                self.thaw()
                self._before_restart()
            self._shutdown(graceful=not crash)
            if downtime > 0:
                time.sleep(downtime)
            self._launch()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.base_dir / "server.log" if self.base_dir is not None else None

    @property
    def version(self) -> str:
        return self._read_version()

    # --- chaos -----------------------------------------------------------------------------
    def freeze(self) -> None:
        """SIGSTOP the server and all its children: connections stay open, nothing answers."""
        with self._lock:
            self._require_started()
            stopped = self._signal_all(signal.SIGSTOP)
            self._frozen = True
        # SIGSTOP is delivered asynchronously: return only once every process is stopped, so
        # a test that freezes and then talks to the server really meets a frozen one.
        _wait_stopped(stopped)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        with self._lock:
            if self._frozen and self.running:
                self._signal_all(signal.SIGCONT)
            self._frozen = False

    @property
    def is_frozen(self) -> bool:
        return self._frozen

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Self]:
        self.freeze()
        try:
            yield self
        finally:
            self.thaw()

    def kill_connections(self, *, application_name: str | None = None) -> int:
        """Kill client sessions server-side (not the admin's own); return how many."""
        self._require_started()
        if self._frozen:
            raise ServerError(f"{self.kind} is frozen: thaw() it before kill_connections()")
        return self._kill_sessions(application_name)

    # --- helpers for subclasses --------------------------------------------------------------
    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0 and self.system_user is not None

    def _run_as_kwargs(self) -> dict[str, Any]:
        if not self.as_root:
            return {}
        assert self.system_user is not None
        entry = pwd.getpwnam(self.system_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(LC_ALL="C", LANG="C")
        if self.as_root:
            assert self.system_user is not None
            env.update(HOME=pwd.getpwnam(self.system_user).pw_dir, USER=self.system_user)
        return env

    def _run(
        self,
        argv: Sequence[str],
        *,
        as_server_user: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> str:
        """Run a helper program (initdb, a client); raise with its output if it fails."""
        kwargs = self._run_as_kwargs() if as_server_user else {}
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                timeout=timeout,
                check=False,
                input=input,
                env=dict(env) if env is not None else self._child_env(),
                cwd=self.base_dir,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
        if done.returncode != 0:
            out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            raise ServerError(
                f"{' '.join(argv[:2])} failed ({done.returncode}): {self._redact(out[-2000:])}"
            )
        stdout: bytes = done.stdout
        return stdout.decode(errors="replace")

    def _redact(self, text: str) -> str:
        # Clients echo the failing statement, and ours carry passwords (CREATE USER ...).
        for secret in (self.password, self.admin_password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _chown(self, path: Path) -> None:
        if self.as_root:
            assert self.system_user is not None
            entry = pwd.getpwnam(self.system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _require_started(self) -> None:
        if not self.running:
            raise ServerError(f"{self.kind} server is not running: call start() first")

    # --- internals -------------------------------------------------------------------------
    def _make_base_dir(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"poolguard-{self.kind}-"))
        self._chown(self.base_dir)

    def _launch(self) -> None:
        assert self.base_dir is not None
        log = open(self.base_dir / "server.log", "ab")  # noqa: SIM115 - kept open while running
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=self._child_env(),
                start_new_session=True,
                **self._run_as_kwargs(),
            )
        except BaseException:
            log.close()
            raise
        self._log = log
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._shutdown(graceful=False)
                raise ServerStartError(
                    f"{self.kind} exited with code {code} while starting on port {self.port}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                self._shutdown(graceful=False)
                raise ServerStartError(
                    f"{self.kind} was not ready within {self.startup_timeout:.0f} s on port "
                    f"{self.port}; log tail:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def _signal_all(self, sig: int) -> set[int]:
        """Signal the process group, and any child that left it (belt and braces)."""
        assert self._proc is not None
        pids = {self._proc.pid, *_descendants(self._proc.pid)}
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return pids

    def _shutdown(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._frozen:
                self._signal_all(signal.SIGCONT)
            try:
                if not graceful:
                    raise subprocess.TimeoutExpired(proc.args, 0)
                proc.send_signal(self.stop_signal)
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._signal_all(signal.SIGKILL)
                proc.wait()
        # Stragglers (a backend still exiting) die with the group; they are not our children,
        # their parent (the server) or init reaps them, so no zombie stays behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._frozen = False
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the testing extra
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _new_password() -> str:
    # Hex only: no character needs quoting in a URL, a config file or an SQL literal.
    return os.urandom(12).hex()


def url(scheme: str, user: str, password: str | None, host: str, port: int, path: str) -> str:
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"{scheme}://{auth}@{host}:{port}/{path}"


#: How long freeze() waits for SIGSTOP to take effect on every process.
FREEZE_SETTLE = 2.0


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc (``T`` = stopped), or None when gone/unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _wait_stopped(pids: set[int]) -> None:
    end = time.monotonic() + FREEZE_SETTLE
    while time.monotonic() < end:
        if all(_proc_state(pid) in ("T", "t", None, "Z") for pid in pids):
            return
        time.sleep(0.005)
