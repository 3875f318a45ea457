# Two commands run everything on a fresh machine of this project's kind:
#   make up     start the whole stack natively (local Redis, PostgreSQL, RabbitMQ) and print the URLs
#   make test   run every test
# Both create the virtual environment they need from the pinned lock file.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# setup.py and the C source are in the stamp: ``pip install -e`` compiles gmpworker's
# native core (gmpworker/_core.c) into the source tree, so a change to it reinstalls.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock setup.py gmpworker/_core.c | cksum | cut -d' ' -f1)

.PHONY: venv up down status test lint format bench experiments images compose-up compose-down k8s spike faults system-deps services clean

$(STAMP): pyproject.toml requirements.lock setup.py gmpworker/_core.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[services,loadtest,dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

up: venv services  ## the native stack, in the foreground (Ctrl-C stops it)
	$(BIN)/python -m services.stack up

down: venv
	$(BIN)/python -m services.stack down

status: venv
	$(BIN)/python -m services.stack status

test: venv services system-deps  ## every test; CI adds REQUIRE_ALL=1 so nothing may skip
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv services
	$(BIN)/python -m gmpworker.bench

experiments: venv services  ## every experiment side by side: reports/experiments/report.{md,html}
	$(BIN)/python -m loadtest experiments $(ARGS)

images: venv  ## wheelhouse from requirements.lock + every compose image, package index off
	$(BIN)/python -m loadtest.stack build

compose-up: venv  ## the whole stack in Docker Compose; waits until healthy, prints the URLs
	$(BIN)/python -m loadtest.stack up

compose-down: venv  ## every container of every profile (volumes too: make compose-down ARGS=-v)
	$(BIN)/python -m loadtest.stack down $(ARGS)

OVERLAY ?= dev
k8s:  ## the Kubernetes manifests of one overlay (dev, production, keda): make k8s OVERLAY=production
	@scripts/k8s-render $(OVERLAY)

spike: venv services
	$(BIN)/python -m loadtest spike --target native

faults: venv  ## every fault under load in Docker Compose; a table in reports/faults/ (ARGS=--quick)
	$(BIN)/python -m loadtest faults $(ARGS)

services:  ## start local Redis, PostgreSQL, RabbitMQ when they are not running
	scripts/ensure-services

system-deps:  ## Debian packages some tests drive: Prometheus, Chromium
	scripts/system-deps

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
