# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# VENV=<a venv made elsewhere> installs THIS checkout into it (editable, when pyproject.toml is newer than its
# stamp): to run another clone's tests with a borrowed venv without re-pointing it, pass a stamp of your own too
# (`touch /tmp/my.stamp; PYTHONPATH=<clone>/src make test-slurm VENV=<venv> STAMP=/tmp/my.stamp`: make reinstalls when the
# stamp is missing or older than pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
# Users bring their own CUDA build: `make install TORCH_SPEC="torch torchvision --index-url ..."`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP ?= $(VENV)/.install-stamp
PYTEST_ARGS ?=

help: ## Show the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with dev tools (idempotent)

test: install ## Run the fast tests (the default CI gate)
	$(PY) -m pytest -m "not slow and not slurm_cluster" $(PYTEST_ARGS)

test-slow: install ## Run only the slow tests (subprocess DDP, sweeps, full-set parity)
	$(PY) -m pytest -m "slow and not slurm_cluster" $(PYTEST_ARGS)

test-all: install ## Run every test but the SLURM cluster ones (make test-slurm)
	$(PY) -m pytest -m "not slurm_cluster" $(PYTEST_ARGS)

SLURM_TESTS := tests/test_slurm_cluster.py
test-slurm: install ## As root on Debian: a local one-node SLURM cluster (packages installed if missing), the launcher's SLURM cases against it without and with accounting, every daemon stopped (~15 min)
	scripts/slurm_local.sh run -- $(PY) -m pytest $(SLURM_TESTS) -m "slurm_cluster and not slurm_accounting" $(PYTEST_ARGS)
	scripts/slurm_local.sh run --accounting -- $(PY) -m pytest $(SLURM_TESTS) -m slurm_accounting $(PYTEST_ARGS)

lint: install ## ruff check + format check, mypy on src/ (config in pyproject.toml); CI runs it before the tests
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

complexity: install ## Print the Table 5 complexity comparison
	$(PY) -m dgggan_pl.complexity

benchmarks-doc: install ## Regenerate docs/benchmarks.md from the result files benchmarks/results/*.json
	$(PY) benchmarks/render.py

DEMO_DIR ?= demo_outputs

demo: install ## Train experiment=demo on CPU (a few minutes, no downloads), upscale a held-out image, write metrics.md
	rm -rf $(DEMO_DIR)/run
	$(PY) -m dgggan_pl.train experiment=demo hydra.run.dir=$(DEMO_DIR)/run
	$(PY) scripts/demo_report.py $(DEMO_DIR)

GPU_CHECK_OUT ?= gpu_check_outputs

gpu-check: ## On a CUDA machine, offline and without install (< 8 min): throughput, bf16, DDP, resume (docs/gpu.md)
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) scripts/gpu_check.py --out $(GPU_CHECK_OUT)

clean: ## Remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache outputs multirun wandb demo_outputs

.PHONY: demo gpu-check help install test test-slow test-all test-slurm lint format complexity benchmarks-doc clean
