# Developer entry points. `make demo` runs the whole stack locally; `make test` is what CI runs (.ci/run).

SHELL := bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the dependencies change.
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo up down test test-fast lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e ".[test]"
	touch $@

# SF (scale factor, default 0.1) and ROOT (default ./lakehouse-data) are passed through to infra/demo.sh.
demo: venv
	bash infra/demo.sh

up: venv
	bash infra/up.sh

down:
	bash infra/down.sh

test: venv
	$(BIN)/python -m pytest -q tests/

# Without the slow end-to-end tests (real Prefect server and worker).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests/

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy lakehouse flows
