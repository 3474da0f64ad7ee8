"""Fixtures for the PostgreSQL integration tests (engine factories: tests/integration/conftest.py).

Each test tags its connections with a unique ``application_name`` so that
``server.kill_connections(application_name=...)`` only ever hits that test's sessions on the
shared server.

Async engines use psycopg unless a test asks for another driver: ``@both_async_drivers`` runs
it once with psycopg and once with asyncpg (the ``async_driver`` fixture, overridden by the
parametrization), so the async fault matrix is one set of tests for both drivers.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

_ids = itertools.count(1)


@pytest.fixture
def app_name() -> str:
    return f"pgtest_{os.getpid()}_{next(_ids)}"


@pytest.fixture
def engine_connect_args(app_name: str) -> dict[str, Any]:
    """Every engine of this suite tags its sessions with the test's application_name."""
    return {"application_name": app_name}


ASYNC_DRIVERS = ("psycopg", "asyncpg")
#: Run an async test with each async PostgreSQL driver poolguard supports.
both_async_drivers = pytest.mark.parametrize("async_driver", ASYNC_DRIVERS)


@pytest.fixture
def async_driver() -> str:
    """The async engines' driver (``POOLGUARD_ASYNC_DRIVER``); see ``both_async_drivers``."""
    return "psycopg"


@pytest.fixture
def async_engine_options(async_driver: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Async engines get the suite's driver; asyncpg takes the session's ``application_name``
    as a server setting, not as a connect argument."""

    def adapt(options: dict[str, Any]) -> dict[str, Any]:
        options = {"async_driver": async_driver, **options}
        if options["async_driver"] == "asyncpg":
            options["connect_args"] = _for_asyncpg(options.get("connect_args", {}))
        return options

    return adapt


def _for_asyncpg(connect_args: dict[str, Any]) -> dict[str, Any]:
    args = dict(connect_args)
    name = args.pop("application_name", None)
    if name is not None:
        args["server_settings"] = {**args.get("server_settings", {}), "application_name": name}
    return args
