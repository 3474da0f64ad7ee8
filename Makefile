# poolguard developer entry points. Every target installs what it needs first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup demo check test unit lint typecheck bench conformance clean generate generate-check

setup:
	@bash scripts/setup.sh

## The main job: the same workload through vanilla SQLAlchemy/redis-py and poolguard while
## local PostgreSQL and Redis are restarted, frozen, killed, stalled; scoreboard + demo.html.
demo: setup
	$(VENV)/bin/poolguard demo --report demo.html

## Start local PostgreSQL, MariaDB and Redis and check them (the deploy-time doctor).
check: setup
	$(VENV)/bin/poolguard check --local

## The whole test suite against real local servers (started and stopped by the tests).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Unit tests only (no servers), a few seconds.
unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## SQLAlchemy's and redis-py's own test suites through poolguard (docs/conformance.md), ~7 min.
conformance: setup
	bash scripts/conformance.sh $(CONFORMANCE_ARGS)

lint: setup generate-check
	$(VENV)/bin/ruff check poolguard tests benchmarks examples tools
	$(VENV)/bin/ruff format --check poolguard tests benchmarks examples tools
	$(VENV)/bin/mypy poolguard tools/async_to_sync.py

## Write each generated sync module from its asyncio source (tools/async_to_sync.py, PAIRS).
generate: setup
	$(PY) tools/async_to_sync.py

## Fail with a diff when a generated sync module is not what its asyncio source generates.
generate-check: setup
	$(PY) tools/async_to_sync.py --check

## Every backend against its anchors in one run (~2.5 min): one table on stdout, the same as
## benchmarks/results/latest.json and a chart of the ratios, latest.png (docs/benchmarks.md).
## BENCH_ARGS=--quick for a short run while developing; --only redis, --case "32 threads" ...
bench: setup
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
