"""The pytest plugin, exercised the way pytest loads it: in a separate pytest run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from poolguard.testing.servers import RedisServer

DRIVERS = ("psycopg", "redis", "pymysql", "aiomysql", "psycopg_pool")


def run_pytest(
    tmp_path: Path, test_source: str, **env: str | None
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(test_source))
    child_env = {
        k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("POOLGUARD_")
    }
    for key, value in env.items():
        if value is not None:
            child_env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plugin_import_is_cheap() -> None:
    lazy = ("poolguard.testing.servers", "poolguard.testing.proxy")
    code = (
        "import sys, poolguard.testing.plugin, poolguard.testing\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DRIVERS!r} or m in {lazy!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_plugin_is_registered_by_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("poolguard")


USES_REDIS = """
    def test_uses_redis(redis_server):
        assert redis_server.port
"""


@pytest.mark.redis
def test_missing_server_skips_with_the_install_command(tmp_path: Path) -> None:
    # PATH without /usr/bin: redis-server cannot be found (python is run by its full path).
    done = run_pytest(tmp_path, USES_REDIS, PATH="/nonexistent")
    assert "1 skipped" in done.stdout, done.stdout + done.stderr
    assert "apt-get install -y redis-server" in done.stdout


@pytest.mark.redis
def test_missing_server_fails_under_ci(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, USES_REDIS, PATH="/nonexistent", CI="true")
    assert done.returncode != 0
    assert "1 error" in done.stdout, done.stdout + done.stderr
    assert "CI=true" in done.stdout


@pytest.mark.redis
def test_external_url_is_read_only(tmp_path: Path) -> None:
    with RedisServer() as server:
        done = run_pytest(
            tmp_path,
            f"""
            from poolguard.testing.plugin import RemoteServer

            def test_external(redis_server):
                assert isinstance(redis_server, RemoteServer)
                assert (redis_server.host, redis_server.port) == ("127.0.0.1", {server.port})
                assert redis_server.url == "{server.url}"

            def test_no_chaos_on_external(redis_server):
                redis_server.kill_connections()
            """,
            POOLGUARD_TEST_REDIS_URL=server.url,
        )
    assert "1 passed, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert "chaos needs a local redis server" in done.stdout


@pytest.mark.redis
def test_factories_clean_up(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path,
        """
        import socket
        from poolguard.testing.servers._system import tcp_accepts

        seen = {}

        def test_make(dedicated_server, fault_proxy):
            server = dedicated_server("redis")
            proxy = fault_proxy(server)
            with socket.create_connection((proxy.host, proxy.port)) as sock:
                sock.sendall(b"PING\\r\\n")
                assert sock.recv(16) == b"+PONG\\r\\n"
            seen.update(server=server.port, proxy=proxy.port, base=server.base_dir)

        def test_gone_after_teardown():
            assert not tcp_accepts(seen["server"])
            assert not tcp_accepts(seen["proxy"])
            assert not seen["base"].exists()
        """,
    )
    assert "2 passed" in done.stdout, done.stdout + done.stderr


def test_fixtures_add_their_markers(tmp_path: Path) -> None:
    done = run_pytest(
        tmp_path,
        """
        import pytest

        @pytest.fixture
        def postgres_server():  # shadows the plugin's: no server needed to test markers
            return None

        def test_pg(postgres_server):
            pass

        def test_plain():
            pass
        """,
        PYTEST_ADDOPTS="-m 'not postgres'",
    )
    assert "1 passed, 1 deselected" in done.stdout, done.stdout + done.stderr


@pytest.mark.redis
def test_docker_mode_yields_read_only_servers(tmp_path: Path) -> None:
    # pytest-docker's fixtures stood in for by a local Redis "container" on a host port.
    with RedisServer() as server:
        (tmp_path / "conftest.py").write_text(
            textwrap.dedent(
                f"""
                import pytest

                class Services:
                    def port_for(self, service, container_port):
                        assert (service, container_port) == ("redis", 6379)
                        return {server.port}

                    def wait_until_responsive(self, check, timeout, pause):
                        assert check()

                @pytest.fixture(scope="session")
                def docker_services():
                    return Services()

                @pytest.fixture(scope="session")
                def docker_ip():
                    return "127.0.0.1"
                """
            )
        )
        done = run_pytest(
            tmp_path,
            f"""
            def test_docker(redis_server, dedicated_server):
                assert redis_server.url == "redis://127.0.0.1:{server.port}/0"
                dedicated_server("redis")  # skips: chaos needs local servers
            """,
            POOLGUARD_TEST_SERVERS="docker",
        )
    assert "1 skipped" in done.stdout, done.stdout + done.stderr
    assert "needs local server mode" in done.stdout
