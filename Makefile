# Two entry points for a fresh machine: `make run` (main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: run test setup lint dry-run

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: any looser resolution pulls the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/activate

setup: $(BIN)/activate

run: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

dry-run: setup
	$(BIN)/snakemake -n --cores $(CORES)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint
