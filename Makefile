# Developer entry points. `make demo` runs the whole stack locally; `make test` is what CI runs (.ci/run).

SHELL := bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the dependencies change.
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo up down test test-extended test-all test-fast lint constraints

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The pip that ships with python3.11 is 23.x; a current one resolves faster and reports conflicts better.
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --upgrade pip
	@# constraints.txt pins the set verified together: without it pip's resolver backtracks through botocore
	@# releases for more than ten minutes on a fresh machine.
	$(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt -e ".[demo,test]"
	touch $@

# Re-pin after changing dependencies in pyproject.toml (then commit constraints.txt).
constraints:
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade -e ".[demo,test]"
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# SF (scale factor, default 0.1) and ROOT (default ./lakehouse-data) are passed through to infra/demo.sh.
demo: venv
	bash infra/demo.sh

up: venv
	bash infra/up.sh

down:
	bash infra/down.sh

# Lint first (ruff + mypy, seconds), then the default suite (about 12 minutes here). CI (.ci/run) runs it, then the
# extended set: the scenarios of many processes that take minutes each (the Prefect deployments on a real server and
# worker, the three-node Ray cluster, the crash sweeps, runs racing on S3), about 8 minutes more.
test: lint
	$(BIN)/python -m pytest -q -m "not extended" tests/

test-extended: venv
	$(BIN)/python -m pytest -q -m extended tests/

test-all: lint
	$(BIN)/python -m pytest -q tests/

# Without the slow end-to-end tests (real Prefect server and worker).
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests/

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy lakehouse flows schemas examples
