"""The native pools' shared decisions (``integrations/_native_rules.py``) import no driver:
a MySQL-only install has no psycopg, a PostgreSQL-only one no PyMySQL / aiomysql."""

from __future__ import annotations

import subprocess
import sys

import pytest

_POSTGRES = ("psycopg", "psycopg_pool")
_MYSQL = ("pymysql", "aiomysql")


def _import_without(module: str, drivers: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    # A None entry in sys.modules makes ``import name`` raise ImportError, as if not installed.
    code = f"import sys; sys.modules.update(dict.fromkeys({drivers!r})); import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("module", "drivers"),
    [
        ("poolguard.integrations._native_rules", _POSTGRES + _MYSQL),
        ("poolguard.integrations.aiomysql_pool._rules", _POSTGRES),
        ("poolguard.integrations.psycopg_pool._rules", _MYSQL),
    ],
)
def test_imports_no_other_driver(module: str, drivers: tuple[str, ...]) -> None:
    result = _import_without(module, drivers)
    assert result.returncode == 0, result.stderr


def test_the_block_works() -> None:
    # The check above would pass vacuously if blocking did not make the import fail.
    result = _import_without("poolguard.integrations.aiomysql_pool._rules", _MYSQL)
    assert result.returncode != 0
    assert "ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr
