# Two entry points for newcomers: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/seqlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(BIN)/seqlab

.PHONY: env demo test lint
env: $(BIN)/seqlab

demo: env
	$(BIN)/seqlab train configs/demo.yaml --workdir runs/demo

test: env
	$(BIN)/ruff check seqlab tests scripts
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: env
	$(BIN)/ruff check seqlab tests scripts
