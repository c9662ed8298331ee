# The README's two commands: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep every Ray process this project starts on loopback (see README, "Development"):
# Ray reads this when imported and otherwise advertises the machine's network address.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PYTHONUNBUFFERED := 1

.PHONY: run test lint typecheck pytest bench results clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedsim run configs/quickstart.yaml

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy fedsim lightning_modules ray_jobs

pytest: $(STAMP)
	$(BIN)/pytest -q --durations=15

# README "## Benchmarks"; about 25 minutes on 2 cores (one thing at a time).
bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/imports.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/lightning_api.py

# README "## Results": original / low-rank / FedPara on the digits (IID and Dirichlet
# 0.5, gamma 0.1) and pFedPara against FedAvg / FedPer / local-only on the 2-shard
# split, and FedPara / original with int8 or top-k encodings (compression), each
# with one seed, in this process (no Ray). 4 to 6 minutes on 2 cores.
RESULTS     := docs/results
RESULTS_RUN := --backend local log.root=runs/results log.tensorboard=false

results: $(STAMP)
	$(BIN)/fedsim compare configs/quickstart.yaml name=digits_iid data.partition=iid \
	    model.gamma=0.1 rounds=60 --target 0.9 --out $(RESULTS)/iid $(RESULTS_RUN)
	$(BIN)/fedsim compare configs/quickstart.yaml name=digits_dirichlet \
	    data.partition=dirichlet data.alpha=0.5 model.gamma=0.1 rounds=60 \
	    --target 0.9 --out $(RESULTS)/dirichlet $(RESULTS_RUN)
	$(BIN)/fedsim compare configs/personalization/quickstart_fedavg.yaml \
	    name=digits_shards --variants fedavg,fedper,pfedpara,local_only --target 0.85 \
	    --out $(RESULTS)/personalization $(RESULTS_RUN)
	$(BIN)/fedsim compare configs/quickstart.yaml name=digits_compression \
	    data.partition=dirichlet data.alpha=0.5 model.gamma=0.1 rounds=60 \
	    --variants original,original+int8,fedpara,fedpara+int8,fedpara+topk \
	    --target 0.9 --out $(RESULTS)/compression $(RESULTS_RUN)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
