"""Shared test configuration. The fixtures live in the ``poolguard`` pytest plugin
(poolguard/testing/plugin.py, registered through the pytest11 entry point)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """For pytest-docker, used only when POOLGUARD_TEST_SERVERS=docker."""
    return str(Path(__file__).resolve().parent.parent / "docker" / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup() -> str:
    """Wait for the compose healthchecks, not just for the containers to exist."""
    return "up --build -d --wait"
