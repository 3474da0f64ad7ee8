"""Fixtures for the PostgreSQL integration tests (engine factories: tests/integration/conftest.py).

Each test tags its connections with a unique ``application_name`` so that
``server.kill_connections(application_name=...)`` only ever hits that test's sessions on the
shared server.
"""

from __future__ import annotations

import itertools
import os
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
