#!/usr/bin/env bash
# The version matrix CI runs: the declared floors on the oldest supported Python, and the newest
# releases on the newest Python. Each cell gets its own venv under .venv-matrix/<cell> (the
# package installed editable), then runs the unit tests and the PostgreSQL (SQLAlchemy and native
# psycopg_pool), MySQL and Redis integration tests against real local servers (the same
# poolguard.testing fixtures as `make test`). Left to `make test` on the default venv: the CLI,
# metrics, web-app and conformance suites (they test poolguard, not the versions it wraps).
#
#   bash scripts/matrix.sh              # both cells, one after the other
#   bash scripts/matrix.sh floor        # one cell: floor | newest
#
# floor:  Python = requires-python's floor (3.10); every ">=" of the runtime dependencies and
#         extras pinned exactly (constraints generated from pyproject.toml by scripts/floors.py,
#         the one place the floors live), then checked against what pip installed.
# newest: the newest Python ($NEWEST_PYTHON_VERSION, 3.13) and the newest releases of
#         everything (re-resolved whenever pyproject.toml changes, or with MATRIX_REFRESH=1).
#
# Interpreters come from PATH (python3.10, python3.13) or pyenv ($PYENV_ROOT/versions/X.Y.*).
# A missing one skips its cell with the install command, except under CI=true where it fails.
# Environment: MATRIX_DIR, MATRIX_TESTS (test paths), MATRIX_IGNORE, MATRIX_PYTEST_ARGS,
# FLOOR_PYTHON / NEWEST_PYTHON (interpreter paths), NEWEST_PYTHON_VERSION, MATRIX_REFRESH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

MATRIX_DIR=${MATRIX_DIR:-.venv-matrix}
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
NEWEST_PYTHON_VERSION=${NEWEST_PYTHON_VERSION:-3.13}
MATRIX_TESTS=${MATRIX_TESTS:-tests/unit tests/integration/postgres \
tests/integration/postgres_native tests/integration/mysql tests/integration/redis}
MATRIX_PYTEST_ARGS=${MATRIX_PYTEST_ARGS:--q -p no:cacheprovider}
# Tests of the developer tools (tools/, their deps are in the dev extra): not about versions.
MATRIX_IGNORE=${MATRIX_IGNORE:-tests/unit/tools}

say() { echo "matrix: $*" >&2; }

# find_python X.Y: an interpreter for that minor version that runs (PATH first — a pyenv shim
# there may not be activated — then pyenv's newest installed patch release).
find_python() {
  local want=$1 py
  for py in "$(command -v "python$want" || true)" \
    "$(compgen -G "$PYENV_ROOT/versions/$want.*/bin/python$want" | sort -V | tail -n 1 || true)"; do
    if [ -n "$py" ] && "$py" -c 'import sys' >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

# A Python with tomllib (3.11+) to read pyproject.toml before any venv exists.
toml_python() {
  local py
  for py in "${NEWEST_PYTHON:-}" "$(find_python "$NEWEST_PYTHON_VERSION" || true)" python3; do
    [ -n "$py" ] && "$py" -c 'import tomllib' 2>/dev/null && { echo "$py"; return; }
  done
  say "no Python >= 3.11 to read pyproject.toml"; return 1
}

# The stamp: re-install when pyproject.toml, floors.py or this script changed.
stamp_of() { cat pyproject.toml scripts/floors.py scripts/matrix.sh | cksum | cut -d' ' -f1; }

install_floor() {
  local venv=$1 constraints="$MATRIX_DIR/constraints-floor.txt"
  "$(toml_python)" scripts/floors.py >"$constraints"
  # The runtime extras with every floor exact, then the test tools under the same constraints.
  "$venv/bin/python" -m pip install -q -c "$constraints" -e ".[all]"
  mapfile -t tools < <("$(toml_python)" scripts/floors.py --tools)
  "$venv/bin/python" -m pip install -q -c "$constraints" "${tools[@]}"
  # pip could have satisfied a ">=" with something newer: fail unless the floors are what runs.
  "$venv/bin/python" scripts/floors.py --check
}

install_newest() {
  local venv=$1
  "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
}

# cell NAME PYTHON_VERSION
cell() {
  local name=$1 version=$2 py venv="$MATRIX_DIR/$1" started status=0
  local override_var="${name^^}_PYTHON"
  py=${!override_var:-$(find_python "$version" || true)}
  if [ -z "$py" ]; then
    say "$name: no Python $version (looked for python$version on PATH and in $PYENV_ROOT/versions);"
    say "  install it, e.g. 'pyenv install $version', or point $override_var at one"
    if [ "${CI:-}" = "true" ]; then
      summary+=("$name: FAILED (no Python $version)"); return 1
    fi
    summary+=("$name: skipped (no Python $version)"); return 0
  fi
  started=$(date +%s)
  if [ ! -x "$venv/bin/python" ]; then
    say "$name: creating $venv with $py"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  local stamp
  stamp=$(cat "$venv/.stamp" 2>/dev/null || true)
  if [ "${MATRIX_REFRESH:-0}" = 1 ] || [ "$stamp" != "$(stamp_of)" ]; then
    say "$name: installing"
    "install_$name" "$venv"
    stamp_of >"$venv/.stamp"
  fi
  local versions
  versions=$("$venv/bin/python" - <<'EOF'
import platform
from importlib.metadata import version
names = ("SQLAlchemy", "psycopg", "psycopg-pool", "redis", "hiredis", "greenlet", "pytest")
print(f"Python {platform.python_version()}, " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
)
  say "$name: $versions"
  say "$name: pytest $MATRIX_TESTS"
  # shellcheck disable=SC2086  # word splitting of the path and argument lists is intended
  local ignore=() p
  for p in $MATRIX_IGNORE; do ignore+=("--ignore=$p"); done
  "$venv/bin/python" -m pytest $MATRIX_TESTS "${ignore[@]}" $MATRIX_PYTEST_ARGS || status=$?
  local took=$(( $(date +%s) - started ))
  local verdict="passed"
  [ "$status" -ne 0 ] && verdict="FAILED (pytest exit $status)"
  summary+=("$name: $verdict in ${took}s — $versions")
  return "$status"
}

mkdir -p "$MATRIX_DIR"
summary=()
cells=("$@")
[ ${#cells[@]} -eq 0 ] && cells=(floor newest)
failed=0
for c in "${cells[@]}"; do
  case "$c" in
    floor) cell floor "$("$(toml_python)" scripts/floors.py --python)" || failed=1 ;;
    newest) cell newest "$NEWEST_PYTHON_VERSION" || failed=1 ;;
    *) say "unknown cell '$c' (floor, newest)"; exit 2 ;;
  esac
done
echo "== version matrix"
printf '  %s\n' "${summary[@]}"
exit "$failed"
