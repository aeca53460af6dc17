# The README's two commands. Both create .venv on first use and reinstall when
# a requirements file or pyproject.toml changes.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
WORKDIR ?= runs/tiny
# The default and quick suites in pytest-xdist workers, one per core of CI's
# two; a test file stays on one worker so its module fixtures are built once.
# TEST_JOBS=0 runs them in one process. The slow checks run in one process:
# each already fills both cores (subprocesses, 8 forced devices), and two at
# once took longer than one after the other (docs/benchmarks.md).
TEST_JOBS ?= 2
# Each run ends with its 25 slowest tests, so a CI log says where time went.
PYTEST := $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=25
# Silence the machine's pip index notes but keep real errors.
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: run test test-quick test-slow lint format params gpu-wheels clean

run: $(VENV)/.run-deps
	$(PY) main.py --config=configs/pretrain.py:tiny --workdir=$(WORKDIR)

test: $(VENV)/.test-deps lint
	$(PYTEST)

# The edit-test loop: no lint, no `slow` or `heavy` tests (tests/conftest.py);
# under three minutes on 2 CPU cores.
test-quick: $(VENV)/.test-deps
	$(PYTEST) -m "not slow and not heavy"

test-slow: $(VENV)/.test-deps
	$(PY) -m pytest -q -m slow --durations=25

lint: $(VENV)/.test-deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.test-deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

params: $(VENV)/.run-deps
	$(PY) -m uniter_jax.tools.param_count

# For benchmarks/gpu_check.sh on a GPU machine that cannot reach a package
# index: the wheels of the pure-Python packages a stock CUDA image lacks
# (ott-jax and its jaxopt), at this venv's versions, into .whl/, which the
# script installs there.
gpu-wheels: $(VENV)/.run-deps
	rm -rf .whl
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps \
	    --only-binary=:all: -d .whl \
	    $$($(PY) -m pip list --format=freeze | grep -E '^(ott-jax|jaxopt)==') $(QUIET)
	ls .whl

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) -r requirements.txt $(QUIET)
	$(PIP) --no-deps -e . $(QUIET)
	# Every runtime module imports with the runtime requirements alone (no test extras yet).
	$(PY) -c "import ott, optax; import uniter_jax.train.loop, uniter_jax.convert.__main__, uniter_jax.data.convert.__main__, uniter_jax.data.tfds_builders, uniter_jax.tools.visualize"
	touch $@

$(VENV)/.test-deps: requirements-test.txt $(VENV)/.run-deps
	$(PIP) -r requirements-test.txt $(QUIET)
	$(PY) -c "import torch, transformers, ot, nbclient, ipykernel; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .whl
