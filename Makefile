# `make up` and `make test` install what they need first (scripts/setup: Debian
# packages, .venv, the package, etcd), and skip what is already there. PYTHON
# (a virtual environment) and VENV can be given on the command line only.
VENV = .venv
PYTHON = $(VENV)/bin/python
PYTEST_ARGS ?=
UP_ARGS ?=
SETUP = VENV=$(VENV) bash scripts/setup
# Tests run as in an activated environment: its console scripts (gitquorum) on PATH.
ACTIVATE = $(if $(findstring /,$(PYTHON)),PATH="$(abspath $(dir $(PYTHON))):$$PATH")

.PHONY: up deps deps-test install proto lint typecheck test test-floors test-unit \
	test-integration test-faults test-long test-through-proxy

# A whole local cluster (etcd, 3 nodes, proxy, HTTP gateway) until Ctrl-C.
up: deps
	$(PYTHON) -m gitquorum.cli.main up $(UP_ARGS)

deps:
	$(SETUP) run $(PYTHON)

deps-test:
	$(SETUP) test $(PYTHON)

install: deps-test

# Regenerate the protocol modules from proto/ (tests fail while they are stale).
# The `proto` extra pins grpcio-tools; its protoc decides the gencode version,
# which the protobuf and grpcio floors of pyproject.toml must cover
# (tests/unit/test_packaging.py checks that).
proto: deps-test
	$(PYTHON) -m gitquorum.protogen

lint: deps-test
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

typecheck: deps-test
	$(PYTHON) -m mypy

# The unit tests against the lowest versions pyproject.toml allows, in their
# own environment (.venv-floors), so the floors stay true.
test-floors: deps-test
	$(SETUP) floors $(PYTHON)
	$(VENV)-floors/bin/python -m pytest -q -p no:cacheprovider tests/unit

# The whole suite: lint, types, the unit tests at the dependency floors, every
# test tier (unit, integration, acceptance, fuzz, fault, limits, shutdown,
# soak), then the storage-node suite again through a proxy in front of three
# nodes.
test: deps-test lint typecheck test-floors
	$(ACTIVATE) $(PYTHON) -m pytest -q -p no:cacheprovider --durations=30 $(PYTEST_ARGS)
	$(ACTIVATE) GITQUORUM_TEST_THROUGH_PROXY=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration/node $(PYTEST_ARGS)

test-unit: deps-test
	$(ACTIVATE) $(PYTHON) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: deps-test
	$(ACTIVATE) $(PYTHON) -m pytest -q tests/integration tests/acceptance $(PYTEST_ARGS)

test-faults: deps-test
	$(ACTIVATE) $(PYTHON) -m pytest -q tests/chaos tests/faults tests/soak tests/integration/limits tests/integration/shutdown $(PYTEST_ARGS)

# The long fault run, outside `make test`: the proofs that each nemesis does
# what it names, then a randomized schedule of every nemesis
# (docs/reliability.md). DURATION in seconds (default 600) of wall clock the
# schedule runs, SEED to replay a schedule (every run prints its seed),
# NEMESES=a,b to run some alone. Each nemesis alone is `make test-nemeses`.
DURATION ?= 600
SEED ?=
NEMESES ?=
test-long: deps-test
	$(ACTIVATE) GITQUORUM_FAULTS_DURATION=$(DURATION) GITQUORUM_FAULTS_SEED=$(SEED) \
		GITQUORUM_FAULTS_NEMESES=$(NEMESES) \
		$(PYTHON) -m pytest -q -p no:cacheprovider -m long -s tests/faults \
		--ignore=tests/faults/test_each_alone.py $(PYTEST_ARGS)

# Each nemesis of the suite alone, one fault run after another
# (tests/faults/test_each_alone.py), DURATION_EACH seconds each (default 60);
# SEED replays them; PYTEST_ARGS='-k clock-skew' runs one.
.PHONY: test-nemeses
DURATION_EACH ?= 60
test-nemeses: deps-test
	$(ACTIVATE) GITQUORUM_FAULTS_EACH_DURATION=$(DURATION_EACH) GITQUORUM_FAULTS_SEED=$(SEED) \
		$(PYTHON) -m pytest -q -p no:cacheprovider -m long -s tests/faults/test_each_alone.py \
		$(PYTEST_ARGS)

# The storage-node suite alone, through a proxy in front of three nodes.
test-through-proxy: deps-test
	$(ACTIVATE) GITQUORUM_TEST_THROUGH_PROXY=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration/node $(PYTEST_ARGS)
