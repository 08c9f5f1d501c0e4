# The two commands of the quick start are `make demo` and `make test`; both run `make setup` first.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup demo test test-unit test-redis test-flink test-integration test-cluster test-install bench lock lint clean

setup:
	@bash devstack/setup/setup.sh

demo: setup
	$(PY) -m cli demo

test: lint
	$(PYTEST) tests

test-unit: setup
	$(PYTEST) -m unit tests

test-redis: setup
	$(PYTEST) -m redis tests

test-flink: setup
	$(PYTEST) -m flink tests

test-integration: setup
	$(PYTEST) -m integration tests

test-cluster: setup
	$(PYTEST) -m cluster tests

test-install: setup
	$(PYTEST) -m install tests

bench: setup
	$(PY) -m bench.e2e
	$(PY) -m bench.features
	$(PY) -m bench.serving
	$(PY) -m bench.scoring

# Re-resolve the whole dependency set in one run (then commit requirements.lock).
lock:
	$(PY) -m uv pip compile requirements.in -o requirements.lock --python-version 3.11

# ruff for the code, import-linter for the direction of imports (contracts in pyproject.toml)
lint: setup
	$(PY) -m ruff check .
	.venv/bin/lint-imports

clean:
	rm -rf .run var serving/generated serving/lookupd/internal/pb jobs/java/target
