# `make demo` sets up a local virtualenv and runs the whole job on the embedded synthetic world;
# `make test` sets up the same environment and runs the test suite (what CI runs).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Metaflow refuses to run as an unknown user (e.g. root in a container without $USER).
export METAFLOW_USER ?= $(or $(USER),pythia)
PYTEST_ARGS ?=
# `make test` runs the suite on this many pytest-xdist workers (0: in this process, as plain
# `pytest` does). The suite is CPU-bound and a serial run keeps about one of CI's two cores
# busy (~1,500 s of CPU in 1,666 s); each test file stays on one worker (--dist loadfile), so a
# module's flow run and fixtures are built once; each worker has its own Spark session and tmp.
# Files go out in collection order, the longest first (tests/conftest.py: LONG_FILES_FIRST).
PYTEST_WORKERS ?= 2

.PHONY: setup demo seeds test test-fast bench java clean lock

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run make PYTHON=/path/to/python3.11"; exit 1; }
	bash scripts/ensure_java.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

java:
	bash scripts/ensure_java.sh

demo: setup java
	$(PY) flows/demo_flow.py run

# `make seeds`: the main job once per seed, then `pythia seeds` pools the runs (each margin of
# the cards' models-vs-baselines, regional-vs-global and blind-twin tables, with a t test)
SEEDS ?= 0 1 2 3 4
SEED_MODELS ?= default,mlp_blind
seeds: setup java
	for s in $(SEEDS); do $(PY) flows/demo_flow.py run --seed $$s --models $(SEED_MODELS) || exit 1; done
	$(PY) -m pythia.cli seeds --latest $(words $(SEEDS))

# PYTHIA_EXPECT_LOCK: setup installed constraints.txt, and tests/test_lock.py checks it did
test: setup java
	PYTHIA_EXPECT_LOCK=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		$(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup java
	for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# `make lock`: the newest releases pyproject.toml allows, written to constraints.txt (the exact
# stack setup installs; scripts/lock.sh). The README's figures were measured on the lock.
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

clean:
	rm -rf .pythia .metaflow
