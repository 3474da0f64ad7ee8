# poolguard developer entry points. Every target installs what it needs first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo check test unit lint typecheck bench clean

setup:
	@bash scripts/setup.sh

## The main job on the embedded default: start local PostgreSQL, MariaDB and Redis and check them.
demo check: setup
	$(VENV)/bin/poolguard check --local

## The whole test suite against real local servers (started and stopped by the tests).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Unit tests only (no servers), a few seconds.
unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check poolguard tests benchmarks examples
	$(VENV)/bin/ruff format --check poolguard tests benchmarks examples
	$(VENV)/bin/mypy poolguard

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
