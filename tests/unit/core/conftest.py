"""Fixtures for the policy-core unit tests: a fake clock, a deterministic RNG, testing mode."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from core_fakes import FakeClock

from poolguard.core import retry as retry_module


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def testing_mode() -> Iterator[None]:
    """set_testing(True) for one test, restored afterwards."""
    retry_module.set_testing(True)
    try:
        yield
    finally:
        retry_module.set_testing(False)


@pytest.fixture(autouse=True)
def _no_testing_leak() -> Iterator[None]:
    # set_testing is process-global: make sure no test inherits or leaks it.
    retry_module.set_testing(False)
    yield
    retry_module.set_testing(False)
