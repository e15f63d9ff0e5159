# `make demo` sets up a local virtualenv and runs the whole job on the embedded synthetic world;
# `make test` sets up the same environment and runs the test suite (what CI runs).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Metaflow refuses to run as an unknown user (e.g. root in a container without $USER).
export METAFLOW_USER ?= $(or $(USER),pythia)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench java clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH, or run make PYTHON=/path/to/python3.11"; exit 1; }
	bash scripts/ensure_java.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

java:
	bash scripts/ensure_java.sh

demo: setup java
	$(PY) flows/demo_flow.py run

test: setup java
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup java
	for b in benchmarks/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .pythia .metaflow
