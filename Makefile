# privnet: `make demo` and `make test` work on a fresh machine (Python 3.11+).
# The virtualenv is created once; the stamp file makes re-runs fast (re-installs when
# pyproject.toml changes).

PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.privnet-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=
BENCH_STAMP := $(VENV)/.privnet-bench-installed
PACKAGES  := workflows activities starter sandbox migrations soak settings.py worker.py

.PHONY: demo test lint typecheck pytest e2e dev install clean bench soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]' \
		|| $(BIN)/python -m pip install --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The embedded stack plus one connection, end to end (DEMO_ARGS=--once exits after Active).
demo: $(STAMP)
	$(BIN)/privnet demo $(DEMO_ARGS)

## Lint, type-check, then the whole test suite (unit, activity, workflow, e2e).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,bench]' \
		|| $(BIN)/python -m pip install --no-build-isolation -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## The benchmark of issue 12 (31-33 min here: three repetitions, each about 3.5 min of
## throughput, guard and skip and 8 of the hold; BENCH_ARGS=--quick for N=20, one
## repetition; python -m bench --help for the options). Results in bench/results/.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## The fault soak of issue 10: random operations and faults against a stack of its own, then
## the invariant checker (SOAK_ARGS="--duration 600 --seed 7"; privnet soak --help).
soak: $(STAMP)
	$(BIN)/python -m soak $(SOAK_ARGS)

## The stack in the foreground (writes .privnet/stack.json).
dev: $(STAMP)
	$(BIN)/privnet dev up

clean:
	rm -rf .privnet build *.egg-info .mypy_cache .ruff_cache .pytest_cache
