# Entry points for newcomers: `make demo` (installs seqlab alone) and `make test` (adds the test
# and benchmark extras: pytest, ruff, CPU torch and fla for the reference comparisons). Both
# create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@ $(VENV)/.installed-demo

.PHONY: env demo test lint
env: $(VENV)/.installed-test

demo: $(VENV)/.installed-demo
	$(BIN)/seqlab train demo --workdir runs/demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check seqlab tests scripts examples
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: $(VENV)/.installed-test
	$(BIN)/ruff check seqlab tests scripts examples
