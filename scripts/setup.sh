#!/usr/bin/env bash
# Install what poolguard's demo, tests and benchmarks need on a fresh Debian/Ubuntu machine:
# the database servers (as packages; they are started by poolguard.testing, never as services)
# and a virtualenv in .venv with the package and its test extras. Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev}

have_pg() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || command -v postgres >/dev/null; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have_pg || missing+=(postgresql)
{ have mariadbd || have mysqld; } || missing+=(mariadb-server)
have redis-server || missing+=(redis-server)
have redis-sentinel || missing+=(redis-sentinel)
have pgbouncer || missing+=(pgbouncer)
# `poolguard demo --report`: the test that the HTML renders opens it in headless Chromium.
{ have chromium || have chromium-browser; } || missing+=(chromium)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "poolguard setup: missing ${missing[*]}; install them with: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "poolguard setup: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "poolguard setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Re-install when pyproject.toml changed since the last install (cheap check, quiet otherwise).
stamp="$VENV/.poolguard-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "poolguard setup: installing poolguard[$EXTRAS] into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
