# Every command in the README. `make demo` and `make test` bootstrap .venv on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/usage_engine/requirements.txt | sha256sum | cut -c1-12)
ARCH ?= arm64
REGION ?= eu-west-1
# Template checks run offline: a region is needed, credentials are not.
export AWS_DEFAULT_REGION ?= $(REGION)
export SAM_CLI_TELEMETRY := 0

.PHONY: venv demo test lint typecheck template-check pytest build clean

$(STAMP): requirements-dev.txt layers/usage_engine/requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

## The whole flow against the local AWS emulator (moto) and the local Usage Engine emulator.
# The layer's package is on the path as it is in Lambda (/opt/python).
demo: venv
	PYTHONPATH=layers/usage_engine $(BIN)/python -m local.demo

## Lint, strict type checks, template checks and the test suite.
test: lint typecheck template-check pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each function is its own `app` module (as in Lambda), so each is checked on its own.
typecheck: venv
	$(BIN)/mypy --strict layers/usage_engine/usage_engine
	for fn in functions/*/; do $(BIN)/mypy --strict "$$fn"app.py; done

template-check: venv
	$(BIN)/cfn-lint template.yaml
	$(BIN)/sam validate --lint --template template.yaml

pytest: venv
	$(BIN)/python -m pytest

## sam build for one architecture (ARCH=arm64|x86_64); the layer Makefile reads LAYER_ARCHITECTURE.
build: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" LAYER_ARCHITECTURE=$(ARCH) $(BIN)/sam build --parameter-overrides Architecture=$(ARCH)

clean:
	rm -rf $(VENV) .aws-sam .mypy_cache .ruff_cache .pytest_cache
