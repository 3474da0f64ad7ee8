"""The faults the demo injects: each a named, bounded action on the embedded servers.

A scenario's ``fault`` runs in the runner's thread while both sides' workloads run; it must
return when the fault is over (the server back, the stall ended). Each lasts a few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
import sqlalchemy
from sqlalchemy import event

from poolguard.demo.workload import Gate

if TYPE_CHECKING:
    from poolguard.demo.own import OwnServer
    from poolguard.testing import FaultProxy, MySQLServer, PostgresServer, RedisServer

__all__ = ["SCENARIOS", "Scenario", "Servers"]


@dataclass
class Servers:
    """The embedded servers every scenario runs on."""

    postgres: PostgresServer | OwnServer  # OwnServer: the user's (--pg-url), no process control
    redis: RedisServer | OwnServer
    pg_proxy: FaultProxy  # in front of PostgreSQL, for the scenarios with via_proxy
    mysql: MySQLServer | OwnServer
    #: Set by the lost-commit fault: the next COMMIT on the side's engine loses its reply.
    commit_trap: threading.Event = field(default_factory=threading.Event)
    #: The traffic lull of the mysql-idle fault; the workload waits on it.
    gate: Gate = field(default_factory=Gate)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fault: Callable[[Servers, float], None]  # (servers, length in seconds)
    length: float  # the fault's default length (s); --duration overrides it
    deadline: float  # the per-request deadline poolguard enforces in this scenario (s)
    what: str  # what the fault does ("{length}" is the fault's length), for --list and reports
    via_proxy: bool = False  # both sides reach PostgreSQL through Servers.pg_proxy
    #: Called with each side's engine before its workload starts (the lost-commit trap).
    engine_hook: Callable[[Servers, sqlalchemy.Engine], None] | None = None
    database: str = "postgres"  # the bank's server: "postgres" or "mysql"
    needs_process: bool = False  # stops or SIGSTOPs the server: embedded servers only
    #: Server settings for the whole side's run (set before its pool connects, then undone).
    setup: Callable[[Servers], Callable[[], None]] | None = None

    def describe(self, length: float | None = None) -> str:
        return self.what.format(length=self.length if length is None else length)


DOWNTIME = 1.5
FREEZE_FOR = 3.0
KILL_EVERY = 0.2
KILL_FOR = 3.0
STALL_FOR = 1.0
STALLS = 2


def _pg_restart(servers: Servers, length: float) -> None:
    servers.postgres.restart(downtime=length)


def _pg_freeze(servers: Servers, length: float) -> None:
    with servers.postgres.frozen():
        time.sleep(length)


def _pg_kills(servers: Servers, length: float) -> None:
    start = time.monotonic()
    for n in range(1, max(2, int(length / KILL_EVERY)) + 1):
        time.sleep(max(0.0, start + n * KILL_EVERY - time.monotonic()))
        servers.postgres.kill_connections()


def _pg_blackhole(servers: Servers, length: float) -> None:
    # Packets vanish both ways (no RST, no FIN): what a dead route or a failed-over IP looks
    # like. Held data flows again when the blackhole clears.
    servers.pg_proxy.blackhole()
    try:
        time.sleep(length)
    finally:
        servers.pg_proxy.clear()


#: After the COMMIT went out with its reply blackholed, the links are reset this much later:
#: the server has committed, the client never hears so.
LOST_REPLY_RESET = 0.3
LOST_COMMITS_EVERY = 1.0


def _trap_commits(servers: Servers, engine: sqlalchemy.Engine) -> None:
    proxy = servers.pg_proxy

    def on_commit(conn: object) -> None:
        if not servers.commit_trap.is_set():
            return
        servers.commit_trap.clear()
        # SQLAlchemy's "commit" event fires before the COMMIT is sent: it goes upstream and
        # is applied, its reply is held, then every link is reset.
        proxy.blackhole("downstream")
        threading.Timer(LOST_REPLY_RESET, _reset_and_clear, args=(proxy,)).start()

    event.listen(engine, "commit", on_commit)


def _reset_and_clear(proxy: FaultProxy) -> None:
    proxy.reset()
    proxy.clear()


def _lost_commits(servers: Servers, length: float) -> None:
    start = time.monotonic()
    try:
        while time.monotonic() - start < length:
            servers.commit_trap.set()
            time.sleep(LOST_COMMITS_EVERY)
    finally:
        servers.commit_trap.clear()
        time.sleep(LOST_REPLY_RESET + 0.1)  # a trap sprung last is cleared before the fault ends


#: MariaDB's wait_timeout during mysql-idle: the server closes a session idle longer than this.
#: A session takes the GLOBAL value when it connects, hence set before the side's pool exists.
IDLE_KILL_AFTER = 1
IDLE_FOR = 2.0


def _short_wait_timeout(servers: Servers) -> Callable[[], None]:
    admin = sqlalchemy.create_engine(
        sqlalchemy.make_url(servers.mysql.admin_url).set(drivername="mysql+pymysql"),
        poolclass=sqlalchemy.pool.NullPool,
    )
    with admin.begin() as conn:
        before = int(conn.execute(sqlalchemy.text("SELECT @@GLOBAL.wait_timeout")).scalar_one())
        conn.execute(sqlalchemy.text(f"SET GLOBAL wait_timeout = {IDLE_KILL_AFTER}"))

    def restore() -> None:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"SET GLOBAL wait_timeout = {before}"))
        admin.dispose()

    return restore


def _mysql_lull(servers: Servers, length: float) -> None:
    # One transfer is held open at its first statement, then the app goes quiet: every pooled
    # connection and the held transaction sit idle past wait_timeout and MariaDB closes them.
    gate = servers.gate
    gate.trapped.clear()
    gate.released.clear()
    gate.trap.set()
    gate.trapped.wait(2.0)  # the transfer worker takes the trap within one transfer
    gate.open.clear()
    try:
        time.sleep(max(length, IDLE_KILL_AFTER + 0.5))
    finally:
        gate.trap.clear()
        gate.released.set()
        gate.open.set()


def _redis_stall(servers: Servers, length: float) -> None:
    # DEBUG SLEEP from a separate admin connection: the server answers nobody meanwhile.
    with redis.Redis.from_url(servers.redis.admin_url, socket_timeout=30) as admin:
        for _ in range(STALLS):
            admin.execute_command("DEBUG", "SLEEP", length / STALLS)
            time.sleep(0.3)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "pg-restart",
            "PostgreSQL restart",
            _pg_restart,
            DOWNTIME,
            5.0,
            "PostgreSQL stops, stays down {length:g} s, starts again",
            needs_process=True,
        ),
        Scenario(
            "pg-freeze",
            "PostgreSQL frozen (SIGSTOP)",
            _pg_freeze,
            FREEZE_FOR,
            2.0,
            "PostgreSQL is SIGSTOPped for {length:g} s: connections open, nothing answers",
            needs_process=True,
        ),
        Scenario(
            "pg-kills",
            "Kill storm",
            _pg_kills,
            KILL_FOR,
            5.0,
            f"every PostgreSQL backend is pg_terminate_backend-ed every {KILL_EVERY} s "
            "for {length:g} s",
        ),
        Scenario(
            "net-blackhole",
            "Network blackhole",
            _pg_blackhole,
            FREEZE_FOR,
            2.0,
            "the network to PostgreSQL drops every packet for {length:g} s (fault proxy), "
            "then heals",
            via_proxy=True,
        ),
        Scenario(
            "lost-commit",
            "Lost COMMIT replies",
            _lost_commits,
            FREEZE_FOR,
            5.0,
            f"every {LOST_COMMITS_EVERY:g} s for {{length:g}} s a transfer's COMMIT is applied "
            "but its reply is lost (connection reset)",
            via_proxy=True,
            engine_hook=_trap_commits,
        ),
        Scenario(
            "mysql-idle",
            "MariaDB wait_timeout idle kill",
            _mysql_lull,
            IDLE_FOR,
            5.0,
            f"MariaDB's wait_timeout is {IDLE_KILL_AFTER} s; the app goes quiet for {{length:g}} s "
            "with one transfer held open: the server closes every idle connection",
            database="mysql",
            setup=_short_wait_timeout,
        ),
        Scenario(
            "redis-stall",
            "Redis INCR under a stall",
            _redis_stall,
            STALL_FOR * STALLS,
            5.0,
            f"Redis stalls (DEBUG SLEEP) {STALLS} times, {{length:g}} s in all: INCRs time "
            "out after being sent",
        ),
    )
}


def run_fault(scenario: Scenario, servers: Servers, length: float) -> threading.Thread:
    """Run the fault in a thread (so Ctrl-C in the main thread still stops the demo)."""
    thread = threading.Thread(
        target=scenario.fault, args=(servers, length), daemon=True, name=f"fault-{scenario.name}"
    )
    thread.start()
    return thread
