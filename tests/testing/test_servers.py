"""The local server launchers, against the real servers they start (as root here)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from poolguard.testing.servers import (
    LocalServer,
    MySQLServer,
    PgBouncerServer,
    PostgresServer,
    RedisServer,
    ServerUnavailable,
)
from poolguard.testing.servers._system import find_binary, tcp_accepts

pytestmark = pytest.mark.chaos

FREEZE_PROBE = 0.5  # how long a call must stay unanswered to count as hanging


# --- one small client per kind: connect, write, read, and a call with a read timeout ---------
def pg_connect(url: str, **kw: Any) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5, **kw)


def mysql_connect(server: LocalServer, **kw: Any) -> Any:
    import pymysql

    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        database=server.database,
        autocommit=True,
        connect_timeout=5,
        **kw,
    )


def redis_connect(url: str, **kw: Any) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=5, **kw)


def pg_query(conn: Any, sql: str) -> Any:
    return conn.execute(sql).fetchone()


def mysql_query(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def no_zombies() -> bool:
    return not [p for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]


def assert_gone(server: LocalServer, pid: int, base: Path, port: int) -> None:
    assert not server.running
    assert not psutil.pid_exists(pid)
    assert not base.exists()
    assert not tcp_accepts(port)
    assert no_zombies()


# --- lifecycle ---------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_start_query_stop() -> None:
    server = PostgresServer()
    assert not server.running  # nothing started at construction
    assert server.port == 0
    with server:
        assert server.url == (f"postgresql://app:{server.password}@127.0.0.1:{server.port}/app")
        with pg_connect(server.url) as conn:
            assert pg_query(conn, "SELECT current_user, current_database()") == ("app", "app")
            assert pg_query(conn, "SHOW max_connections") == ("200",)
            assert pg_query(conn, "SHOW fsync") == ("off",)
        with pg_connect(server.admin_url) as admin:
            assert pg_query(admin, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert server.version.split(".")[0].isdigit()
        pid, base, port = server.pid, server.base_dir, server.port
        assert pid is not None
        assert base is not None
        owner = base.stat().st_uid
        assert owner == psutil.Process(pid).uids().real != 0  # runs as postgres, not root
    assert_gone(server, pid, base, port)
    server.stop()  # idempotent


@pytest.mark.mysql
def test_mysql_users_and_admin(mysql_server: LocalServer) -> None:
    with mysql_connect(mysql_server) as conn:
        assert mysql_query(conn, "SELECT CURRENT_USER(), DATABASE()") == ("app@127.0.0.1", "app")
    # Over the socket ('localhost') the app user works too: no anonymous user shadows it.
    import pymysql

    assert isinstance(mysql_server, MySQLServer)
    with pymysql.connect(
        unix_socket=mysql_server.socket_path,
        user="app",
        password=mysql_server.password,
        database="app",
    ) as local:
        assert mysql_query(local, "SELECT CURRENT_USER()") == ("app@localhost",)
    admin = mysql_server.sql("SELECT COUNT(*) FROM mysql.user WHERE user = ''")
    assert admin == "0"
    assert mysql_server.admin_url.startswith("mysql://root:")
    with pymysql.connect(
        host=mysql_server.host,
        port=mysql_server.port,
        user="root",
        password=mysql_server.admin_password,
    ) as root:
        assert mysql_query(root, "SELECT CURRENT_USER()") == ("root@127.0.0.1",)


@pytest.mark.redis
def test_redis_debug_sleep_enabled(redis_server: LocalServer) -> None:
    client = redis_connect(redis_server.url)
    assert client.ping()
    started = time.monotonic()
    assert client.execute_command("DEBUG", "SLEEP", "0.2")
    assert time.monotonic() - started >= 0.2
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.mark.redis
def test_redis_with_password() -> None:
    import redis

    with RedisServer(password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert redis_connect(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis_connect(f"redis://127.0.0.1:{server.port}/0").get("x")


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_pgbouncer_transaction_pooling(pgbouncer_server: LocalServer) -> None:
    with pg_connect(pgbouncer_server.url, prepare_threshold=None) as conn:
        assert pg_query(conn, "SELECT current_user, current_database()") == ("app", "app")
    with pg_connect(pgbouncer_server.admin_url) as admin:
        pools = admin.execute("SHOW POOLS").fetchall()
        assert any(row[0] == "app" and row[-1] == "transaction" for row in pools)


# --- restart -------------------------------------------------------------------------------------
Check = Callable[[LocalServer], Any]


def _pg_write(s: LocalServer) -> None:
    with pg_connect(s.url) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t (x int)")
        c.execute("INSERT INTO t VALUES (1)")


def _pg_read(s: LocalServer) -> Any:
    with pg_connect(s.url) as c:
        return pg_query(c, "SELECT count(*) FROM t")


def _mysql_write(s: LocalServer) -> None:
    with mysql_connect(s) as c:
        mysql_query(c, "CREATE TABLE IF NOT EXISTS t (x int)")
        mysql_query(c, "INSERT INTO t VALUES (1)")


def _mysql_read(s: LocalServer) -> Any:
    with mysql_connect(s) as c:
        return mysql_query(c, "SELECT COUNT(*) FROM t")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "write", "read"),
    [
        pytest.param("postgres", _pg_write, _pg_read, marks=pytest.mark.postgres),
        pytest.param("mysql", _mysql_write, _mysql_read, marks=pytest.mark.mysql),
    ],
)
def test_restart_with_downtime_keeps_port_and_data(
    dedicated_server: Callable[..., LocalServer], kind: str, write: Check, read: Check
) -> None:
    server = dedicated_server(kind)
    port = server.port
    write(server)
    down_seen = threading.Event()

    def probe() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not down_seen.is_set():
            if not tcp_accepts(port, timeout=0.05):
                down_seen.set()
            time.sleep(0.02)

    watcher = threading.Thread(target=probe)
    watcher.start()
    started = time.monotonic()
    server.restart(downtime=0.5)
    watcher.join()
    assert time.monotonic() - started >= 0.5
    assert down_seen.is_set(), "the port was never refused during the downtime"
    assert server.port == port
    assert server.running
    assert read(server)[0] == 1


@pytest.mark.redis
def test_redis_restart_keeps_data_crash_loses_it(
    dedicated_server: Callable[..., LocalServer],
) -> None:
    import redis

    server = dedicated_server("redis")
    client = redis_connect(server.url)
    client.set("k", "v")
    server.restart(downtime=0.2)
    assert client.ping()  # redis-py reconnects
    assert client.get("k") == b"v"  # a clean restart keeps the data
    client.set("k2", "v2")
    server.restart(crash=True)
    assert client.get("k") == b"v"  # in the snapshot the clean restart saved
    assert client.get("k2") is None  # a crash loses what was not saved
    port = server.port
    server.stop()
    with pytest.raises(redis.ConnectionError):
        redis_connect(f"redis://127.0.0.1:{port}/0").ping()


@pytest.mark.parametrize(
    ("kind", "write", "read"),
    [
        pytest.param("postgres", _pg_write, _pg_read, marks=pytest.mark.postgres),
        pytest.param("mysql", _mysql_write, _mysql_read, marks=pytest.mark.mysql),
    ],
)
def test_crash_restart_keeps_acknowledged_commits(
    dedicated_server: Callable[..., LocalServer], kind: str, write: Check, read: Check
) -> None:
    server = dedicated_server(kind)
    write(server)
    server.restart(crash=True)  # SIGKILL right after the commit was acknowledged
    assert read(server)[0] == 1


# --- freeze / thaw -----------------------------------------------------------------------------
def _hangs_then_finishes(call: Callable[[], Any], server: LocalServer) -> Any:
    """Run ``call`` while ``server`` is frozen: it must not finish until thaw()."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    with server.frozen():
        worker.start()
        worker.join(FREEZE_PROBE)
        assert worker.is_alive(), "answered while frozen"
    worker.join(10)
    assert result, "did not finish after thaw"
    return result[0]


@pytest.mark.postgres
def test_postgres_freeze_stops_backends_too(dedicated_server: Callable[..., LocalServer]) -> None:
    server = dedicated_server("postgres")
    conn = pg_connect(server.url)  # its backend is a child of the postmaster
    backend = pg_query(conn, "SELECT pg_backend_pid()")[0]
    with server.frozen():
        assert psutil.Process(backend).status() == psutil.STATUS_STOPPED
        assert psutil.Process(server.pid).status() == psutil.STATUS_STOPPED
    assert _hangs_then_finishes(lambda: pg_query(conn, "SELECT 42"), server) == (42,)
    conn.close()


@pytest.mark.mysql
def test_mysql_freeze(dedicated_server: Callable[..., LocalServer]) -> None:
    server = dedicated_server("mysql")
    conn = mysql_connect(server)
    assert _hangs_then_finishes(lambda: mysql_query(conn, "SELECT 7"), server) == (7,)
    conn.close()


@pytest.mark.redis
def test_redis_freeze(dedicated_server: Callable[..., LocalServer]) -> None:
    server = dedicated_server("redis")
    client = redis_connect(server.url)
    assert _hangs_then_finishes(client.ping, server) is True


@pytest.mark.redis
def test_stop_while_frozen_leaves_nothing() -> None:
    server = RedisServer().start()
    pid, base, port = server.pid, server.base_dir, server.port
    assert pid is not None
    assert base is not None
    server.freeze()
    server.stop()
    assert_gone(server, pid, base, port)


@pytest.mark.postgres
def test_postgres_stop_while_frozen_with_clients() -> None:
    server = PostgresServer().start()
    conn = pg_connect(server.url)
    pid, base, port = server.pid, server.base_dir, server.port
    assert pid is not None
    assert base is not None
    children = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    server.freeze()
    server.stop()
    assert_gone(server, pid, base, port)
    assert not [c for c in children if psutil.pid_exists(c)]
    conn.close()


# --- kill_connections ---------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_kill_connections(postgres_server: LocalServer) -> None:
    import psycopg

    victims = [pg_connect(postgres_server.url, application_name="victim") for _ in range(2)]
    other = pg_connect(postgres_server.url, application_name="bystander")
    admin = pg_connect(postgres_server.admin_url)
    assert postgres_server.kill_connections(application_name="victim") == 2
    for conn in victims:
        with pytest.raises(psycopg.OperationalError):
            pg_query(conn, "SELECT 1")
    assert pg_query(other, "SELECT 1") == (1,)
    assert postgres_server.kill_connections() >= 1  # every app session, not the admin's
    with pytest.raises(psycopg.OperationalError):
        pg_query(other, "SELECT 1")
    assert pg_query(admin, "SELECT 1") == (1,)
    admin.close()


@pytest.mark.mysql
def test_mysql_kill_connections(mysql_server: LocalServer) -> None:
    import pymysql

    victims = [mysql_connect(mysql_server) for _ in range(2)]
    assert mysql_server.kill_connections() >= 2
    for conn in victims:
        with pytest.raises(pymysql.OperationalError):
            mysql_query(conn, "SELECT 1")
    with pytest.raises(ValueError, match="application_name"):
        mysql_server.kill_connections(application_name="x")


@pytest.mark.redis
def test_redis_kill_connections(redis_server: LocalServer) -> None:
    # redis-py quietly replaces a connection found dead at checkout, so the proof of a kill is
    # a new client id (and the name, which lived on the old connection, gone).
    named = redis_connect(redis_server.url)
    named.client_setname("victim")
    other = redis_connect(redis_server.url)
    named_id, other_id = named.client_id(), other.client_id()
    assert redis_server.kill_connections(application_name="victim") == 1
    assert named.client_id() != named_id
    assert named.client_getname() is None
    assert other.client_id() == other_id
    assert redis_server.kill_connections() >= 2
    assert other.client_id() != other_id


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_pgbouncer_kill_connections(pgbouncer_server: LocalServer) -> None:
    import psycopg

    conn = pg_connect(pgbouncer_server.url, prepare_threshold=None)
    assert pg_query(conn, "SELECT 1") == (1,)
    assert pgbouncer_server.kill_connections() >= 1
    with pytest.raises(psycopg.OperationalError):
        pg_query(conn, "SELECT 1")
    with pg_connect(pgbouncer_server.url, prepare_threshold=None) as again:  # RESUMEd
        assert pg_query(again, "SELECT 1") == (1,)


@pytest.mark.redis
def test_kill_connections_refuses_while_frozen(dedicated_server: Callable[..., Any]) -> None:
    server = dedicated_server("redis")
    with server.frozen(), pytest.raises(RuntimeError, match="frozen"):
        server.kill_connections()


# --- missing software --------------------------------------------------------------------------
def test_missing_binary_names_the_install_command() -> None:
    with pytest.raises(ServerUnavailable, match=r"install it with: apt-get install -y nothing"):
        find_binary(["no-such-server-binary"], "apt-get install -y nothing")


@pytest.mark.parametrize(
    ("cls", "package"),
    [(RedisServer, "redis-server"), (MySQLServer, "mariadb-server")],
)
def test_server_without_binary_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, cls: type[LocalServer], package: str
) -> None:
    # Only the sbin dirs find_binary always adds stay searchable: no redis-server, no mariadb
    # client (both live in /usr/bin).
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerUnavailable, match=f"apt-get install -y {package}"):
        cls()


def test_ports_are_free_and_outside_the_ephemeral_range() -> None:
    from poolguard.testing.servers import free_port
    from poolguard.testing.servers._system import _ephemeral_range

    low, _ = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_pgbouncer_needs_a_running_upstream() -> None:
    from poolguard.testing.servers import ServerStartError

    with pytest.raises(ServerStartError, match="upstream"):
        PgBouncerServer(PostgresServer()).start()


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_dedicated_pgbouncer_survives_an_upstream_restart(
    dedicated_server: Callable[..., Any],
) -> None:
    bouncer = dedicated_server("pgbouncer")
    assert isinstance(bouncer.upstream, PostgresServer)
    with pg_connect(bouncer.url, prepare_threshold=None) as conn:
        assert pg_query(conn, "SELECT 1") == (1,)
    bouncer.upstream.restart(downtime=0.3)
    deadline = time.monotonic() + 10
    while True:  # PgBouncer retries the server login every second (server_login_retry)
        try:
            with pg_connect(bouncer.url, prepare_threshold=None) as conn:
                assert pg_query(conn, "SELECT 2") == (2,)
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _pg_setting(server: LocalServer) -> Any:
    with pg_connect(server.url) as conn:
        return pg_query(conn, "SHOW idle_session_timeout")[0]


def _mysql_setting(server: LocalServer) -> Any:
    with mysql_connect(server) as conn:
        return str(mysql_query(conn, "SELECT @@global.wait_timeout")[0])


def _redis_setting(server: LocalServer) -> Any:
    client = redis_connect(server.url)
    try:
        return client.config_get("timeout")["timeout"]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("kind", "config", "show"),
    [
        pytest.param(
            "postgres",
            {"idle_session_timeout": "7s"},
            _pg_setting,
            marks=pytest.mark.postgres,
        ),
        pytest.param("mysql", {"wait_timeout": "7"}, _mysql_setting, marks=pytest.mark.mysql),
        pytest.param("redis", {"timeout": "7"}, _redis_setting, marks=pytest.mark.redis),
    ],
)
def test_extra_config_reaches_the_server(
    dedicated_server: Callable[..., LocalServer],
    kind: str,
    config: dict[str, str],
    show: Callable[[LocalServer], Any],
) -> None:
    assert show(dedicated_server(kind, config=config)) in {"7s", "7"}


@pytest.mark.postgres
@pytest.mark.pgbouncer
def test_pgbouncer_refuses_startup_options_like_production(pgbouncer_server: LocalServer) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        pg_connect(pgbouncer_server.url, options="-c statement_timeout=1000")


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("pgbouncer", marks=[pytest.mark.postgres, pytest.mark.pgbouncer]),
    ],
)
def test_first_start_moves_on_when_its_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, postgres_server: LocalServer, kind: str
) -> None:
    """Another process (a parallel test run) binds the picked port before the server does."""
    import poolguard.testing.servers._base as base

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        real_free_port = base.free_port
        monkeypatch.setattr(base, "free_port", lambda: next(picks, None) or real_free_port())
        classes: dict[str, Callable[[], LocalServer]] = {
            "redis": RedisServer,
            "mysql": MySQLServer,
            "postgres": PostgresServer,
            "pgbouncer": lambda: PgBouncerServer(postgres_server),  # type: ignore[arg-type]
        }
        with classes[kind]() as server:
            assert server.port != taken
            assert tcp_accepts(server.port)
