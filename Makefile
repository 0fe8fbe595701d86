# One-command entry points for a fresh Debian 12 machine (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint check bench clean

$(STAMP): pyproject.toml scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The trusted launch scenario on real VMs (`tl demo trust-core`: the fast offline trust-core demo).
DEMO_ARGS ?=
demo: setup
	$(BIN)/tl demo $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check trustedlaunch tests bench fuzz
	$(BIN)/ruff format --check trustedlaunch tests bench fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/eventlog_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
