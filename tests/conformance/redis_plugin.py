"""pytest plugin (``-p redis_plugin``): redis-py's own suite, its clients built by poolguard.

redis-py's suite makes its clients in two places: ``tests.conftest._get_client`` (sync) and the
``create_redis`` fixture of ``tests/test_asyncio/conftest.py``. Both parse ``--redis-url``, apply
the test's keywords (which win over the URL there), build a ``ConnectionPool`` and instantiate
``cls(connection_pool=pool)``. With ``CONFORMANCE_MODE=guarded`` that last step is replaced:
when ``cls`` is plain ``redis.Redis`` / ``redis.asyncio.Redis``, the pool's resolved connection
keywords go to ``poolguard.redis.from_url`` / ``async_from_url`` instead, and the test gets
poolguard's client. Everything else in the suite's factories (single-connection clients,
``--protocol``, teardown with FLUSHDB) is unchanged. Clients a test builds itself
(``redis.Redis(...)`` in a test body) and cluster/Sentinel clients stay plain.
In ``plain`` mode nothing is replaced; the same run is the baseline.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import conformance_outcomes
import pytest
import pytest_asyncio
import redis
import redis.asyncio

MODE_ENV = "CONFORMANCE_MODE"
SYNC_CONFTEST = "tests.conftest"
ASYNC_CONFTEST = "tests.test_asyncio.conftest"
# Connection keywords that make up the URL; the rest are passed as keywords.
URL_PARTS = ("host", "port", "db")
URL_DEFAULTS = ("localhost", 6379, 0)
# Exit code when the suite's factories are not where this plugin expects them.
ROUTING_FAILED = 3


def _guarded() -> bool:
    return os.environ.get(MODE_ENV, "guarded") == "guarded"


def _count(key: str) -> None:
    conformance_outcomes.routing[key] = conformance_outcomes.routing.get(key, 0) + 1


def _from_pool(pool: Any, default_pool: type[Any]) -> tuple[str, dict[str, Any]]:
    """URL and keywords for poolguard equal to what the suite's plain pool was given."""
    kwargs = dict(pool.connection_kwargs)
    host, port, db = (kwargs.pop(k, d) for k, d in zip(URL_PARTS, URL_DEFAULTS, strict=True))
    if pool.max_connections != default_pool().max_connections:  # only if the test chose it
        kwargs["max_connections"] = pool.max_connections
    # Connection, SSLConnection...: poolguard swaps in its guarded twin, or refuses the class.
    kwargs["connection_class"] = pool.connection_class
    return f"redis://{host}:{port}/{db}", kwargs


def _guarded_sync(connection_pool: Any, **client_kwargs: Any) -> Any:
    """Stands in for ``redis.Redis`` as the suite's ``cls``."""
    import poolguard.redis

    url, kwargs = _from_pool(connection_pool, redis.ConnectionPool)
    connection_pool.disconnect()  # never used: it made no connection
    _count("guarded")
    return poolguard.redis.from_url(url, **kwargs, **client_kwargs)


def _guarded_async(connection_pool: Any, **client_kwargs: Any) -> Any:
    """Stands in for ``redis.asyncio.Redis`` as the suite's ``cls``."""
    import poolguard.redis

    url, kwargs = _from_pool(connection_pool, redis.asyncio.ConnectionPool)
    _count("guarded")
    return poolguard.redis.async_from_url(url, **kwargs, **client_kwargs)


def _route_get_client(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_client(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is redis.Redis:
            cls = _guarded_sync
        else:
            _count("plain")
        return original(cls, *args, **kwargs)

    return get_client


def _route_create_redis(original: Any) -> Any:
    """The ``create_redis`` fixture again, its factory handing plain clients to poolguard."""
    marker = original._fixture_function_marker
    body = original._get_wrapped_function()

    @pytest_asyncio.fixture(params=marker.params, ids=marker.ids, scope=marker.scope)
    async def create_redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
        suite = body(request)
        factory = await suite.__anext__()

        async def guarded_factory(*args: Any, **kwargs: Any) -> Any:
            if len(args) < 2 and kwargs.get("cls", redis.asyncio.Redis) is redis.asyncio.Redis:
                kwargs["cls"] = _guarded_async
            else:
                _count("plain")
            return await factory(*args, **kwargs)

        try:
            yield guarded_factory
        finally:
            with contextlib.suppress(StopAsyncIteration):
                await suite.__anext__()

    return create_redis


@pytest.fixture(scope="session", autouse=True)
def enable_tracemalloc() -> None:
    """Stands in for the suite's fixture of that name, which traces every allocation of the
    session (for ResourceWarning tracebacks only): it doubled the CPU time of the run."""


def pytest_configure(config: pytest.Config) -> None:
    # The suite's conftests are loaded (pytest loads the initial conftests first) but their
    # fixtures are not parsed yet (that happens at session start): replacing them here works.
    if SYNC_CONFTEST not in sys.modules:
        pytest.exit(f"{SYNC_CONFTEST} is not loaded: cannot route clients", ROUTING_FAILED)
    sync_conftest = sys.modules[SYNC_CONFTEST]
    sync_conftest.enable_tracemalloc = enable_tracemalloc  # both modes: the same suite
    if not _guarded():
        return
    sync_conftest._get_client = _route_get_client(sync_conftest._get_client)
    if ASYNC_CONFTEST in sys.modules:
        async_conftest = sys.modules[ASYNC_CONFTEST]
        async_conftest.create_redis = _route_create_redis(async_conftest.create_redis)
