# Every command in the README. `make demo` and `make test` bootstrap .venv on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/usage_engine/requirements.txt layers/usage_engine/requirements-xray-sdk.txt | sha256sum | cut -c1-12)
# The functions' architecture (the template's default, arm64, unless ARCH=x86_64); the layers serve both.
ARCH ?=
# The region of deploy, logs, destroy and set-credentials: REGION=..., else the AWS configuration as usual
# (AWS_REGION / AWS_DEFAULT_REGION, the profile's region). Only the offline targets pin one (OFFLINE_REGION).
REGION ?=
OFFLINE_REGION := eu-west-1
# samconfig.toml's environment (default, dev, prod) for deploy; the stack name follows it unless STACK= is given.
CONFIG_ENV ?= default
STACK ?= usage-engine-token-bundle$(if $(filter dev,$(CONFIG_ENV)),-dev)
# checkov and SAM CLI have their own pinned virtualenvs: both pin boto3/botocore (checkov 1.35, aws-sam-cli one
# exact boto3), which would hold back the boto3/botocore that .venv's tests run with (moto's newest).
CHECKS_VENV := $(VENV)/checks
CHECKS_STAMP := $(CHECKS_VENV)/.installed-$(shell sha256sum requirements-checks.txt | cut -c1-12)
SAM_VENV := $(VENV)/sam
SAM_STAMP := $(SAM_VENV)/.installed-$(shell sha256sum requirements-sam.txt | cut -c1-12)
SAM := $(SAM_VENV)/bin/sam
# sam build runs the layer's and the functions' Makefiles with this PATH: .venv/bin first, so their
# `python3 -m pip` is .venv's Python (with pip), whichever Python sam itself runs on.
BUILD_PATH := $(CURDIR)/$(BIN):$(PATH)
# Coverage floor of the layer in `make test` (pytest-cov, line coverage; only in-process coverage counts: what
# runs in threads is measured, handlers run in subprocesses are not). The full suite measured 97.6% (1253
# statements) when this floor was set, a few points below that.
COVERAGE_FLOOR := 94
# Lambda's Python (3.13) compiles the layer's bytecode at build time when this machine has it (else the layer
# ships sources only and every cold start compiles them; see benchmarks/RESULTS.md, section 4).
LAMBDA_PYTHON ?= $(shell for p in python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13; do \
	"$$p" -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
# Expanded once here, not again for every recipe line that inherits it.
export LAMBDA_PYTHON := $(LAMBDA_PYTHON)
# The offline targets (checks, tests, demo, benchmarks, builds) need a region but never reach AWS.
OFFLINE := AWS_DEFAULT_REGION=$(OFFLINE_REGION)
REGION_FLAG := $(if $(REGION),--region $(REGION))
export SAM_CLI_TELEMETRY := 0

.PHONY: venv sam-venv demo test unit lint typecheck template-check checkov pytest build build-all deploy logs destroy set-credentials env-json mutation reliability-doc security bench bench-smoke day clean

$(STAMP): requirements-dev.txt layers/usage_engine/requirements.txt layers/usage_engine/requirements-xray-sdk.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

$(CHECKS_STAMP): requirements-checks.txt | $(STAMP)
	rm -rf $(CHECKS_VENV)
	$(PYTHON) -m venv $(CHECKS_VENV)
	$(CHECKS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checks.txt
	touch $@

$(SAM_STAMP): requirements-sam.txt | $(STAMP)
	rm -rf $(SAM_VENV)
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	touch $@

sam-venv: $(SAM_STAMP)

## The whole flow against the local AWS emulator (moto) and the local Usage Engine emulator.
# The layer's package is on the path as it is in Lambda (/opt/python).
demo: venv
	$(OFFLINE) PYTHONPATH=layers/usage_engine $(BIN)/python -m local.demo

## Lint, strict type checks, template checks and the test suite.
test: lint typecheck template-check build-all pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each function is its own `app` module (as in Lambda), so each is checked on its own. local/ and tools/ are
# packages (mypy names their modules local.* and tools.*); the layer is found through mypy_path (pyproject).
typecheck: venv
	$(BIN)/mypy --strict layers/usage_engine/usage_engine
	for fn in functions/*/; do $(BIN)/mypy --strict "$$fn"app.py; done
	$(BIN)/mypy --strict local tools
	$(BIN)/mypy --strict examples/consumer/function/app.py

template-check: venv checkov $(SAM_STAMP)
	$(OFFLINE) $(BIN)/cfn-lint template.yaml examples/consumer/template.yaml
	$(OFFLINE) $(SAM) validate --lint --template template.yaml
	$(OFFLINE) $(SAM) validate --lint --template examples/consumer/template.yaml

## checkov on template.yaml: zero failed checks; each skip is justified in the template next to its resource.
checkov: $(CHECKS_STAMP)
	$(OFFLINE) $(CHECKS_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet
	$(OFFLINE) $(CHECKS_VENV)/bin/checkov --file examples/consumer/template.yaml --framework cloudformation \
		--skip-download --compact --quiet

# The whole suite with the layer's coverage floor. REQUIRE_BUILD_ARTIFACTS=1: the build tier (tests/build, the
# handlers imported from .aws-sam/build-all by Python 3.13) fails instead of skipping without `make build-all`,
# which `make test` runs first.
pytest: venv
	$(OFFLINE) REQUIRE_BUILD_ARTIFACTS=1 $(BIN)/python -m pytest --cov=layers/usage_engine/usage_engine \
		--cov-report=term-missing:skip-covered --cov-fail-under=$(COVERAGE_FLOOR)

## The fast tiers alone (tests/unit and tests/property, under 30 s): no build, no emulators, no coverage floor
## (the fast tiers alone do not reach the full suite's floor, and a lower one would only guard less).
# Only their folders are collected, so the other tiers' imports (moto, the SAM translator) cost nothing here.
unit: venv
	$(OFFLINE) $(BIN)/python -m pytest -m "unit or property" tests/unit tests/property

## sam build for one architecture (ARCH=arm64|x86_64; the layers are pure Python and serve both). With Python 3.13
## on PATH the layers get bytecode (fast cold starts); without it the build says so and how to get it.
build: venv $(SAM_STAMP)
	PATH="$(BUILD_PATH)" $(SAM) build $(if $(ARCH),--parameter-overrides Architecture=$(ARCH))

## sam build for both architectures (a check: deploy uses `make build`), into .aws-sam/build-all/<arch>.
# Uncached: sam keeps one build.toml beside the build folders, so two cache folders would answer for one
# (architecture-free) layer definition and one of them could serve a stale layer.
build-all: venv $(SAM_STAMP)
	for arch in arm64 x86_64; do \
		$(OFFLINE) PATH="$(BUILD_PATH)" $(SAM) build --no-cached \
			--build-dir .aws-sam/build-all/$$arch --parameter-overrides Architecture=$$arch; \
	done
	$(OFFLINE) PATH="$(BUILD_PATH)" $(SAM) build --no-cached --template examples/consumer/template.yaml \
		--build-dir .aws-sam/example

## Deploy what `make build` built: make deploy [CONFIG_ENV=dev|prod] [REGION=...] [ARCH=x86_64] [GUIDED=1] [PARAMS="AlarmEmail=a@b.c"].
## Parameters not given keep their previous values (docs/operations.md lists them).
deploy: build
	$(SAM) deploy --config-env $(CONFIG_ENV) --stack-name $(STACK) $(REGION_FLAG) \
		$(if $(strip $(ARCH) $(PARAMS)),--parameter-overrides $(if $(ARCH),Architecture=$(ARCH)) $(PARAMS)) \
		$(if $(GUIDED),--guided)

## Follow the functions' logs: make logs [FUNCTION=TokenRefresherFunction].
logs: $(SAM_STAMP)
	$(SAM) logs --stack-name $(STACK) $(REGION_FLAG) $(if $(FUNCTION),--name $(FUNCTION)) --tail

## Delete the stack (asks for confirmation).
destroy: $(SAM_STAMP)
	$(SAM) delete --stack-name $(STACK) $(REGION_FLAG)

## Store the client id/secret from the Usage Engine UI's JSON file and force a token refresh: make set-credentials FILE=...
set-credentials: venv
	@test -n "$(FILE)" || { echo "usage: make set-credentials FILE=application-access.json [STACK=$(STACK)]" >&2; exit 2; }
	PYTHONPATH=layers/usage_engine $(BIN)/python -m tools.set_credentials --file "$(FILE)" --stack "$(STACK)" $(REGION_FLAG)

## env.json for `sam local invoke FUNCTION -e events/... --env-vars env.json`: each function's environment as its
## live alias runs it in the deployed stack (names and ARNs only). Restore the committed placeholders: git checkout env.json
env-json: venv
	$(BIN)/python -m tools.env_json --stack "$(STACK)" $(REGION_FLAG)

MUTATION_VENV := $(VENV)/mutation
MUTATION_STAMP := $(MUTATION_VENV)/.installed-$(shell cat requirements-mutation.txt requirements-dev.txt layers/usage_engine/requirements.txt layers/usage_engine/requirements-xray-sdk.txt | sha256sum | cut -c1-12)

$(MUTATION_STAMP): requirements-mutation.txt requirements-dev.txt layers/usage_engine/requirements.txt layers/usage_engine/requirements-xray-sdk.txt | $(STAMP)
	rm -rf $(MUTATION_VENV)
	$(PYTHON) -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(MUTATION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-mutation.txt
	touch $@

## Mutation testing of the layer and the three handlers against the fast tiers (mutmut; about 15 minutes on
## 2 cores, not part of make test): rewrites docs/mutation.md, whose source hash tests/tools/test_mutation_doc.py checks.
mutation: $(MUTATION_STAMP)
	$(OFFLINE) $(MUTATION_VENV)/bin/python -m tools.mutation

## Rewrite docs/reliability.md from the fault matrix (tests/reliability/matrix.py); `make test` fails while it is stale.
reliability-doc: venv
	$(BIN)/python tools/render_reliability.py

## Static security checks alone (also part of `make test`): bandit on layers/ and functions/, pip-audit on the layer's pins.
security: venv
	$(OFFLINE) $(BIN)/python -m pytest tests/security -rs

## Benchmarks and the fleet simulation: rewrites benchmarks/RESULTS.md (about 4 minutes on 2 cores).
bench: venv
	$(OFFLINE) PYTHONPATH=layers/usage_engine:. $(BIN)/python -m benchmarks.run --output benchmarks/RESULTS.md

## Every benchmark at small sizes (under a minute); prints the report instead of writing RESULTS.md.
bench-smoke: venv
	$(OFFLINE) PYTHONPATH=layers/usage_engine:. $(BIN)/python -m benchmarks.run --quick

## The simulated day alone; it is also printed at the end of `make test`.
day: venv
	$(OFFLINE) PYTHONPATH=layers/usage_engine:. $(BIN)/python -m local.simulation day

clean:
	rm -rf $(VENV) .aws-sam .mypy_cache .ruff_cache .pytest_cache .coverage .coverage.* layers/usage_engine/build
