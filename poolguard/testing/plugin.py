"""pytest plugin: real servers and the fault proxy as fixtures (registered as ``poolguard``).

Fixtures
    ``postgres_server``, ``mysql_server``, ``redis_server``, ``pgbouncer_server`` (session):
    started servers, shared by the whole run; do not restart or freeze them.
    ``dedicated_server(kind, **options)`` (function): a fresh local server of ``kind``
    ("postgres", "mysql", "redis", "pgbouncer") for tests that restart, freeze or kill it;
    stopped at teardown.
    ``fault_proxy(server_or_host, port=None)`` (function): a started :class:`FaultProxy`.
    ``pg_replica_set(standbys=1, synchronous=True, **options)`` (function): a started
    :class:`~poolguard.testing.servers.pg_replication.PgReplicaSet` (primary + streaming
    standbys, ~1.5 s to start) for failover tests; stopped at teardown.

Where servers come from (``POOLGUARD_TEST_SERVERS``)
    ``local`` (default): processes started here by :mod:`poolguard.testing.servers`.
    ``docker``: the services of ``docker/docker-compose.yml`` through pytest-docker.
    ``POOLGUARD_TEST_POSTGRES_URL`` / ``_MYSQL_URL`` / ``_REDIS_URL`` / ``_PGBOUNCER_URL``: an
    external server (and ``..._ADMIN_URL`` for its superuser), whatever the mode.
    Docker and external servers are read-only: their chaos methods skip the test.

A server whose software is missing skips the test with the install command, except under
``CI=true``, where every test must run and a missing server fails instead.

This module is imported by pytest in every run: it imports no driver and starts nothing until a
fixture is used. The servers are ``servers/``, the proxy ``proxy.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote, urlsplit

import pytest

if TYPE_CHECKING:
    from poolguard.testing.proxy import FaultProxy
    from poolguard.testing.servers import LocalServer
    from poolguard.testing.servers.pg_replication import PgReplicaSet

__all__ = ["RemoteServer"]

MODE_ENV = "POOLGUARD_TEST_SERVERS"
KINDS = ("postgres", "mysql", "redis", "pgbouncer")
# Service name and container port of each kind in docker/docker-compose.yml.
DOCKER_SERVICES = {"postgres": 5432, "mysql": 3306, "redis": 6379, "pgbouncer": 6432}
DOCKER_ADMIN = {
    "postgres": "postgresql://postgres:postgres@{host}:{port}/postgres",
    "mysql": "mysql://root:root@{host}:{port}/mysql",
    "redis": "redis://{host}:{port}/0",
    "pgbouncer": "postgresql://pgbouncer_admin:admin@{host}:{port}/pgbouncer",
}
DOCKER_URL = {
    "postgres": "postgresql://app:app@{host}:{port}/app",
    "mysql": "mysql://app:app@{host}:{port}/app",
    "redis": "redis://{host}:{port}/0",
    "pgbouncer": "postgresql://app:app@{host}:{port}/app",
}
DOCKER_START_TIMEOUT = 120.0


class RemoteServer:
    """A server this run did not start (Docker or external URL): same read-only API.

    Chaos operations (restart, freeze, kill_connections) skip the calling test: only a local
    server can be disturbed without harming others.
    """

    def __init__(self, kind: str, url: str, admin_url: str | None = None) -> None:
        parts = urlsplit(url)
        self.kind = kind
        self.url = url
        self.admin_url = admin_url or url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or DOCKER_SERVICES[kind]
        self.user = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.database = parts.path.lstrip("/")
        self.version = "unknown"

    def _no_chaos(self, *args: Any, **kwargs: Any) -> NoReturn:
        pytest.skip(f"chaos needs a local {self.kind} server (this one is {self.host}:{self.port})")

    start = stop = restart = freeze = thaw = frozen = kill_connections = _no_chaos

    def __repr__(self) -> str:
        return f"<RemoteServer {self.kind} {self.host}:{self.port}>"


MARKERS = {
    "postgres": "needs a real PostgreSQL server",
    "mysql": "needs a real MariaDB/MySQL server",
    "redis": "needs a real Redis server",
    "pgbouncer": "needs a real PgBouncer in front of PostgreSQL",
    "chaos": "injects real faults (restarts, kills, freezes, fault proxy)",
    "slow": "takes more than a few seconds",
}
# A test that uses one of these fixtures gets these markers, so `-m "not mysql"` just works.
FIXTURE_MARKERS = {
    "postgres_server": ("postgres",),
    "mysql_server": ("mysql",),
    "redis_server": ("redis",),
    "pgbouncer_server": ("pgbouncer", "postgres"),
    "dedicated_server": ("chaos",),
    "fault_proxy": ("chaos",),
    "pg_replica_set": ("chaos", "postgres"),
    "redis_cluster": ("chaos", "redis"),
}


def pytest_configure(config: pytest.Config) -> None:
    # For projects that use the plugin without declaring poolguard's markers.
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        wanted = {m for fixture in names for m in FIXTURE_MARKERS.get(fixture, ())}
        for marker in sorted(wanted - {m.name for m in item.iter_markers()}):
            item.add_marker(marker)


def pytest_report_header(config: pytest.Config) -> str:
    return f"poolguard test servers: {os.environ.get(MODE_ENV, 'local')}"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _docker_mode() -> bool:
    return os.environ.get(MODE_ENV, "local").strip().lower() == "docker"


def _unavailable(reason: str) -> NoReturn:
    if _ci():
        pytest.fail(f"{reason} (CI=true: every server must run)", pytrace=False)
    pytest.skip(reason)


def _start_local(factory: Callable[[], LocalServer]) -> LocalServer:
    from poolguard.testing.servers import ServerUnavailable

    try:
        return factory().start()
    except ServerUnavailable as exc:
        _unavailable(str(exc))


def _remote(kind: str, request: pytest.FixtureRequest) -> RemoteServer | None:
    env = f"POOLGUARD_TEST_{kind.upper()}_URL"
    if os.environ.get(env):
        admin = os.environ.get(f"POOLGUARD_TEST_{kind.upper()}_ADMIN_URL")
        return RemoteServer(kind, os.environ[env], admin)
    return _docker(kind, request) if _docker_mode() else None


def _docker(kind: str, request: pytest.FixtureRequest) -> RemoteServer:
    from poolguard.testing.servers._system import tcp_accepts

    try:
        services = request.getfixturevalue("docker_services")
    except pytest.FixtureLookupError:
        _unavailable("POOLGUARD_TEST_SERVERS=docker needs pytest-docker: pip install pytest-docker")
    port = int(services.port_for(kind, DOCKER_SERVICES[kind]))
    host = str(request.getfixturevalue("docker_ip"))
    services.wait_until_responsive(
        check=lambda: tcp_accepts(port, host), timeout=DOCKER_START_TIMEOUT, pause=0.5
    )
    fmt = {"host": host, "port": port}
    return RemoteServer(kind, DOCKER_URL[kind].format(**fmt), DOCKER_ADMIN[kind].format(**fmt))


def _server(
    kind: str, request: pytest.FixtureRequest, factory: Callable[[], LocalServer]
) -> Iterator[LocalServer | RemoteServer]:
    remote = _remote(kind, request)
    if remote is not None:
        yield remote
        return
    server = _start_local(factory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[LocalServer | RemoteServer]:
    """A running PostgreSQL shared by the session (role and database ``app``)."""
    from poolguard.testing.servers import PostgresServer

    yield from _server("postgres", request, PostgresServer)


@pytest.fixture(scope="session")
def mysql_server(request: pytest.FixtureRequest) -> Iterator[LocalServer | RemoteServer]:
    """A running MariaDB shared by the session (user and database ``app``)."""
    from poolguard.testing.servers import MySQLServer

    yield from _server("mysql", request, MySQLServer)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[LocalServer | RemoteServer]:
    """A running Redis shared by the session (no password, DEBUG enabled)."""
    from poolguard.testing.servers import RedisServer

    yield from _server("redis", request, RedisServer)


@pytest.fixture(scope="session")
def pgbouncer_server(request: pytest.FixtureRequest) -> Iterator[LocalServer | RemoteServer]:
    """A running PgBouncer (transaction pooling) in front of ``postgres_server``."""
    remote = _remote("pgbouncer", request)
    if remote is not None:
        yield remote
        return
    from poolguard.testing.servers import PgBouncerServer, PostgresServer

    upstream = request.getfixturevalue("postgres_server")
    if not isinstance(upstream, PostgresServer):
        _unavailable("a local PgBouncer needs a local PostgreSQL; set POOLGUARD_TEST_PGBOUNCER_URL")
    yield from _server("pgbouncer", request, lambda: PgBouncerServer(upstream))


DedicatedServer = Callable[..., "LocalServer"]


@pytest.fixture
def dedicated_server() -> Iterator[DedicatedServer]:
    """Factory: ``dedicated_server("postgres" | "mysql" | "redis" | "pgbouncer", **options)``.

    Returns a started server for tests that restart, freeze or kill it; each is stopped at the
    end of the test. ``"pgbouncer"`` comes with its own PostgreSQL (``server.upstream``).
    """
    from poolguard.testing.servers import MySQLServer, PgBouncerServer, PostgresServer, RedisServer

    classes: dict[str, Callable[..., LocalServer]] = {
        "postgres": PostgresServer,
        "mysql": MySQLServer,
        "redis": RedisServer,
    }
    started: list[LocalServer] = []

    def make(kind: str, **options: Any) -> LocalServer:
        if kind not in KINDS:
            raise ValueError(f"dedicated_server kind must be one of {KINDS}, not {kind!r}")
        if os.environ.get(f"POOLGUARD_TEST_{kind.upper()}_URL") or _docker_mode():
            pytest.skip(f"a dedicated {kind} server needs local server mode")
        if kind == "pgbouncer":  # with its own PostgreSQL, reachable as .upstream
            upstream = make("postgres")
            assert isinstance(upstream, PostgresServer)
            server = _start_local(lambda: PgBouncerServer(upstream, **options))
        else:
            server = _start_local(lambda: classes[kind](**options))
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


ReplicaSetFactory = Callable[..., "PgReplicaSet"]


@pytest.fixture
def pg_replica_set() -> Iterator[ReplicaSetFactory]:
    """Factory: ``pg_replica_set(standbys=1, synchronous=True, **options)`` -> a started
    primary/standby set (local mode only); stopped at the end of the test."""
    from poolguard.testing.servers import ServerUnavailable
    from poolguard.testing.servers.pg_replication import PgReplicaSet

    started: list[PgReplicaSet] = []

    def make(standbys: int = 1, **options: Any) -> PgReplicaSet:
        if os.environ.get("POOLGUARD_TEST_POSTGRES_URL") or _docker_mode():
            pytest.skip("a replicated PostgreSQL topology needs local server mode")
        replica_set = PgReplicaSet(standbys, **options)
        started.append(replica_set)
        try:
            return replica_set.start()
        except ServerUnavailable as exc:
            _unavailable(str(exc))

    yield make
    for replica_set in reversed(started):
        replica_set.stop()


ProxyFactory = Callable[..., "FaultProxy"]


@pytest.fixture
def fault_proxy() -> Iterator[ProxyFactory]:
    """Factory: ``fault_proxy(server_or_host, port=None)`` -> started :class:`FaultProxy`."""
    from poolguard.testing.proxy import FaultProxy

    proxies: list[FaultProxy] = []

    def make(target: Any, port: int | None = None) -> FaultProxy:
        if isinstance(target, str):
            if port is None:
                raise TypeError("fault_proxy(host, port): the port is required with a host")
            host, upstream_port = target, port
        else:
            host, upstream_port = target.host, port or target.port
        proxy = FaultProxy(host, upstream_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in reversed(proxies):
        proxy.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A local Redis Cluster for the session: 3 masters + 3 replicas, ``cluster-node-timeout``
    1 s (:class:`~poolguard.testing.servers.redis_cluster.RedisClusterTopology`). Tests that kill
    or fail over a master leave it healthy again (``revive``, ``wait_healthy``)."""
    from poolguard.testing.servers import ServerUnavailable
    from poolguard.testing.servers.redis_cluster import RedisClusterTopology

    try:
        topology = RedisClusterTopology()
    except ServerUnavailable as exc:
        _unavailable(str(exc))
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()
