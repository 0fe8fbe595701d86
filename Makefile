# One-command entry points for a fresh Debian 12 machine (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup kubernetes-binaries demo test lint check bench clean

$(STAMP): pyproject.toml scripts/install-system-packages.sh
	bash scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The pinned Kubernetes release (kubernetes/go.mod) and the node's container runtime (containerd, runc, CNI
# plugins: kubernetes/node-runtime/*/go.mod) in the user cache, outside the clone: built once per set of
# versions by scripts/build_kubernetes.py (cold here: some 6 minutes for Kubernetes, 2.5 for the runtime),
# checked by SHA-256 on every later run (a second or two), rebuilt only when a binary is missing or altered
# or a wrapper module changed, so a venv-only change never rebuilds them.
kubernetes-binaries: | $(STAMP)
	$(BIN)/python scripts/build_kubernetes.py

setup: $(STAMP) kubernetes-binaries

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
