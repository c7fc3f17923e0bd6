# Two commands: `make demo` and `make test`. Each creates or refreshes .venv idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On a machine without CUDA, pin torch to the CPU build so no dependency pulls CUDA wheels.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS := $(if $(HAS_CUDA),,-c deploy/constraints-cpu.txt)
TEST_WORKERS ?= 2

.PHONY: venv demo test test-slow lint clean

$(STAMP): pyproject.toml deploy/constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/stabledrl demo

# The venv's bin first on PATH: Ray jobs started by the tests run `stabledrl` / `python` from it.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" tests

test-slow: $(STAMP)
	$(RUN) $(BIN)/python -m pytest -n $(TEST_WORKERS) -m slow tests

# Lint rules only: the code is laid out by hand (compact, 110 columns), not by `ruff format`.
lint: $(STAMP)
	$(BIN)/ruff check system actors learner bench tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
