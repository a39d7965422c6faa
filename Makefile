# Two entry points for a fresh machine: `make run` (main job on the embedded default) and `make test`.
# Both install exactly requirements-lock.txt (every package pinned, every file hash-checked).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
LOCK := requirements-lock.txt
# The installer and the lock tool are pinned too: a newer pip may resolve or build differently.
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
PIP_COMPILE_FLAGS := --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

.PHONY: run unlock test setup lint dry-run lock test-latest test-cluster report

$(BIN)/activate: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	# Only the locked files: --no-deps resolves nothing, and each file must match its sha256.
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(BIN)/activate

setup: $(BIN)/activate

run: setup
	@$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/default || { status=$$?; \
	  if ls .snakemake/locks/* >/dev/null 2>&1; then \
	    echo "make run: the working directory is locked; if no other snakemake runs here (a killed run left the lock), run: make unlock"; \
	  fi; exit $$status; }

# The HTML report of the finished run: every figure of rules/report.smk with its caption, one category per
# stage (drawn from the run's Parquet artifacts by the `figures` target, then collected).
report: run
	$(BIN)/snakemake figures --cores $(CORES) --workflow-profile profiles/default
	$(BIN)/snakemake figures --report results/report.html --workflow-profile profiles/default

unlock: setup
	$(BIN)/snakemake --unlock --cores 1

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

dry-run: setup
	$(BIN)/snakemake -n --cores $(CORES)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

# Refresh the lock on purpose: the newest versions pyproject.toml's ranges allow, then the conda
# environment from it. Run it where pip resolves torch to the CPU build (this machine image has it in
# /opt/wheels; elsewhere set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION)
	.venv-lock/bin/pip-compile --upgrade $(PIP_COMPILE_FLAGS) --output-file=$(LOCK) pyproject.toml
	.venv-lock/bin/python tools/environment_from_lock.py $(LOCK) environment.yaml

# The suite on the newest versions the ranges allow (not CI): drift shows here before it reaches the
# lock. The versions it ran on are written to .venv-latest/versions.txt.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q torch==2.13.0
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev]'
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/versions.txt
	.venv-latest/bin/ruff check .
	.venv-latest/bin/python -m pytest -q

# A real single-node Slurm cluster (tools/slurm_cluster.sh; root, Debian): jobs go through the SLURM
# executor with profiles/slurm-local; the tests start and stop the cluster. Quick variant:
# make test-cluster CLUSTER_MARK='cluster and not slow'
CLUSTER_MARK ?= cluster
test-cluster: setup
	$(BIN)/python -m pytest -q -s -m "$(CLUSTER_MARK)" tests/test_cluster.py
