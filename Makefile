# The README's two commands: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep every Ray process this project starts on loopback (see README, "Ray on 127.0.0.1").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PYTHONUNBUFFERED := 1

.PHONY: run test lint typecheck pytest bench clean

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

typecheck: $(STAMP)
	$(BIN)/mypy fedsim lightning_modules ray_jobs

pytest: $(STAMP)
	$(BIN)/pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
