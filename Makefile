# Sluice: `make demo` runs the pipelines through an embedded Airflow; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-model test-faults test-e2e test-all lint status serve lock bench clean cluster cluster-down

## The runtime pins (requirements.txt, what the image gets) plus the test and dev tools
## (requirements-dev.txt), resolved as one set, and the sluice package in editable mode.
install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt -r requirements-dev.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

## The whole loop of one use case through an embedded Airflow over a simulated history
## (`make demo USE_CASE=purchases` for the other built-in one).
USE_CASE ?= churn
demo: install
	$(BIN)/sluice demo --use-case $(USE_CASE)

## Unit, model, DAG integrity and integration tests (real PostgreSQL, Redis, S3 server).
test: install
	$(BIN)/python -m pytest -m "not e2e and not faults and not behaviour"

## The gate's behaviour over 20 seeds: real LightGBM models on simulated businesses, a purged holdout.
test-model: install
	$(BIN)/python -m pytest -m behaviour -s

## The fault experiments: killed writers, an S3 outage, a hung PostgreSQL, races, a corpus of bad files.
test-faults: install
	$(BIN)/python -m pytest -m faults

## The slow end-to-end tests: the DAGs through a real Airflow scheduler (CI runs them too).
test-e2e: install
	$(BIN)/python -m pytest -m e2e

## All four.
test-all: test test-model test-faults test-e2e

## Ruff, mypy, then the import contracts of pyproject.toml [tool.importlinter] (the layers of include/sluice).
lint: install
	$(BIN)/ruff check include dags plugins tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

## What is in the lake.
status: install
	$(BIN)/sluice status

## Start the embedded Airflow (UI at the printed address) until Ctrl-C.
serve: install
	$(BIN)/sluice serve

## Resolve requirements.in into requirements.txt (runtime, the image), then requirements-dev.in into
## requirements-dev.txt (test and dev tools, constrained to the runtime pins): both fully pinned.
lock:
	$(BIN)/uv pip compile requirements.in --python-version 3.11 -o requirements.txt
	$(BIN)/uv pip compile requirements-dev.in --python-version 3.11 -o requirements-dev.txt

bench: install
	$(BIN)/python benchmarks/etl.py
	$(BIN)/python benchmarks/drift.py
	$(BIN)/python benchmarks/score.py

## The production topology (docker-compose.yaml) on this machine without Docker: docs/production.md.
cluster: install
	$(BIN)/python -m sluice.ops.twin up

## Stop exactly what `make cluster` started (and drop the databases it created).
cluster-down:
	$(BIN)/python -m sluice.ops.twin down

clean:
	rm -rf .airflow .lake .mlflow .pytest_cache
