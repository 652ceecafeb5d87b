PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install proto lint typecheck test test-unit test-integration bench

install:
	$(PYTHON) -m pip install -e '.[dev]'

# Regenerate the protocol modules from proto/ (tests fail while they are stale).
proto:
	$(PYTHON) -m gitquorum.protogen

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

typecheck:
	$(PYTHON) -m mypy

# The whole suite: lint, types, every test tier (unit, integration, acceptance,
# fuzz, fault, limits, shutdown, soak), then the storage-node suite again
# through a proxy in front of three nodes.
test: lint typecheck
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	GITQUORUM_TEST_THROUGH_PROXY=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration/node $(PYTEST_ARGS)

test-unit:
	$(PYTHON) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration:
	$(PYTHON) -m pytest -q tests/integration tests/acceptance $(PYTEST_ARGS)

test-faults:
	$(PYTHON) -m pytest -q tests/chaos tests/soak tests/integration/limits tests/integration/shutdown $(PYTEST_ARGS)

# The storage-node suite alone, through a proxy in front of three nodes.
test-through-proxy:
	GITQUORUM_TEST_THROUGH_PROXY=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration/node $(PYTEST_ARGS)
