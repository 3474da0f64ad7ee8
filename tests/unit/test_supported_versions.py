"""The declared floors (pyproject.toml) are what the matrix pins and what the README states."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_floors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floors", ROOT / "scripts" / "floors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["floors"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


floors = _load_floors()

#: The libraries poolguard wraps: each floor has a row in the README's "Supported versions".
DOCUMENTED = ("SQLAlchemy", "greenlet", "psycopg", "psycopg-pool", "redis", "hiredis")
DOCUMENTED += ("PyMySQL", "aiomysql")


def _readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Supported versions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2:
            rows[cells[0].lower()] = cells[1]
    return rows


def test_every_runtime_requirement_has_a_floor_the_matrix_can_pin() -> None:
    pinned = {f.name.lower(): f for f in floors.floors()}
    for name in DOCUMENTED:
        assert name.lower() in pinned
    for req in floors.runtime_requirements():
        floors.floor_of(req)  # raises on a requirement without ">="
    constraints = [f.constraint() for f in pinned.values()]
    assert all("==" in c and ">=" not in c for c in constraints)


def test_readme_states_the_declared_floors() -> None:
    rows = _readme_rows()
    pinned = {f.name.lower(): f.version for f in floors.floors()}
    for name in DOCUMENTED:
        assert rows.get(name.lower()) == pinned[name.lower()], name
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {floors.python_floor()} and newer" in text


def test_floor_parsing() -> None:
    f = floors.floor_of("psycopg[binary]>=3.2.4")
    assert (f.name, f.version, f.constraint()) == ("psycopg", "3.2.4", "psycopg==3.2.4")
    f = floors.floor_of("typing-extensions>=4.6; python_version < '3.11'")
    assert f.constraint() == "typing-extensions==4.6; python_version < '3.11'"
    assert floors.floor_of("redis>=7.2,<9").version == "7.2"
    with pytest.raises(ValueError, match="no '>=' floor"):
        floors.floor_of("redis")


def test_check_compares_release_numbers() -> None:
    # "3.2" declared and "3.2.0" installed are the same release; anything else is a mismatch.
    assert floors.mismatches([floors.Floor("pytest", "0.0.1")]) != []
    have = floors.metadata.version("pytest")
    assert floors.mismatches([floors.Floor("pytest", have + ".0")]) == []
    assert floors.mismatches([floors.Floor("no-such-dist-xyz", "1.0")]) != []
    future_only = floors.Floor("no-such-dist-xyz", "1.0", "python_version < '3.0'")
    assert floors.mismatches([future_only]) == []  # the marker does not apply: nothing to check
