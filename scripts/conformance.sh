#!/usr/bin/env bash
# SQLAlchemy's and redis-py's own test suites (from the sdists of the installed versions) run
# through poolguard on local PostgreSQL, MariaDB and Redis, compared with
# tests/conformance/expected_differences.txt. Arguments go to tests/conformance/run.py
# (--only redis, --write-expected, --strict, --full-baseline). See docs/conformance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

bash scripts/setup.sh
# The suites' own test dependencies (the `conformance` extra), once.
if ! "$VENV/bin/python" -c "import packaging, pytest_asyncio, pytest_timeout" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q -e ".[conformance]"
fi
exec "$VENV/bin/python" tests/conformance/run.py "$@"
