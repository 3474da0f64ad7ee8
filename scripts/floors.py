"""The declared dependency floors of poolguard, read from pyproject.toml (the one place they live).

    python scripts/floors.py            # pip constraints pinning every floor exactly (stdout)
    python scripts/floors.py --check    # exit 1 unless the running interpreter has exactly them
    python scripts/floors.py --python   # the oldest supported Python (requires-python)
    python scripts/floors.py --tools    # the test extra's tools (installed next to the floors)

The CI matrix (scripts/matrix.sh) installs the package with these constraints on the oldest
supported Python, so the declared lower bounds are the tested ones. What is pinned: the runtime
dependencies and the runtime extras (``postgres``, ``asyncpg``, ``mysql``, ``redis``, ``testing``) — what a
user's ``pip install "poolguard[...]"`` may resolve to. The ``test``/``dev`` tool extras
(pytest-asyncio, hypothesis, linters) are development tools and float.

Standard library only (plus ``tomli`` on Python 3.10, which pytest already depends on), so it runs
before any venv exists.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: The extras a user installs; their floors are pinned (the tool extras are not).
RUNTIME_EXTRAS = ("postgres", "asyncpg", "mysql", "redis", "testing")
#: The ``test`` extra's web-app stack (examples/fastapi_app): not part of the matrix's test run,
#: and it needs a newer typing-extensions than poolguard's floor, so the floor cell leaves it out.
WEB_APP_STACK = frozenset({"fastapi", "httpx", "uvicorn"})
_REQ = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.+))?$"
)
_FLOOR = re.compile(r">=\s*(?P<version>[0-9][^,\s]*)")


@dataclass(frozen=True)
class Floor:
    name: str
    version: str
    marker: str | None = None

    def constraint(self) -> str:
        pin = f"{self.name}=={self.version}"
        return pin if self.marker is None else f"{pin}; {self.marker}"


def floor_of(requirement: str) -> Floor:
    """The ``>=`` lower bound of one requirement string; ValueError when it has none."""
    m = _REQ.match(requirement)
    if m is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    found = _FLOOR.search(m["spec"])
    if found is None:
        raise ValueError(f"{requirement!r} declares no '>=' floor: the matrix could not test it")
    return Floor(m["name"], found["version"], m["marker"])


def runtime_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    reqs = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        reqs.extend(r for r in extras[extra] if not r.startswith(project["name"]))
    return reqs


def tool_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The ``test`` extra's runner and plugins, as declared (installed next to the floors)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    tools = []
    for req in project["optional-dependencies"]["test"]:
        m = _REQ.match(req)
        name = _normalize(m["name"]) if m else ""
        if name != project["name"] and name not in WEB_APP_STACK:
            tools.append(req)
    return tools


def floors(pyproject: Path = PYPROJECT) -> list[Floor]:
    """One floor per distribution (the highest if two extras both declare one)."""
    best: dict[str, Floor] = {}
    for req in runtime_requirements(pyproject):
        f = floor_of(req)
        key = _normalize(f.name)
        if key not in best or _key(f.version) > _key(best[key].version):
            best[key] = f
    return sorted(best.values(), key=lambda f: _normalize(f.name))


def python_floor(pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = _FLOOR.search(project["requires-python"])
    if found is None:
        raise ValueError("requires-python declares no '>=' floor")
    return str(found["version"])


def mismatches(pinned: list[Floor]) -> list[str]:
    """Floors this interpreter does not have exactly (markers that do not apply are skipped)."""
    wrong = []
    for f in pinned:
        if f.marker is not None and not _marker_applies(f.marker):
            continue
        try:
            have = metadata.version(f.name)
        except metadata.PackageNotFoundError:
            have = "not installed"
        if _key(have) != _key(f.version):
            wrong.append(f"{f.name}: declared floor {f.version}, installed {have}")
    return wrong


def _marker_applies(marker: str) -> bool:
    # The only marker form used in pyproject: python_version < 'X.Y'.
    m = re.fullmatch(r"python_version\s*<\s*['\"](\d+)\.(\d+)['\"]", marker.strip())
    if m is None:
        raise ValueError(f"unsupported marker {marker!r}: extend floors.py")
    return sys.version_info[:2] < (int(m[1]), int(m[2]))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _key(version: str) -> tuple[int, ...]:
    # "3.2" == "3.2.0": floors are plain release numbers.
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv: list[str]) -> int:
    pinned = floors()
    if argv[1:] == ["--check"]:
        wrong = mismatches(pinned)
        for line in wrong:
            print(f"floors: {line}", file=sys.stderr)
        return 1 if wrong else 0
    if argv[1:] == ["--python"]:
        print(python_floor())
        return 0
    if argv[1:] == ["--tools"]:
        print("\n".join(tool_requirements()))
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"# generated by scripts/floors.py from pyproject.toml (Python >= {python_floor()})")
    for f in pinned:
        print(f.constraint())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
