# EMR Autopilot — every command a developer or CI needs. `make test` is the gate.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV ?= dev
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The pinned Node.js 22 and the CDK CLI from package.json come first on PATH (the machine's Node 20 is EOL).
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(BIN):$(PATH)
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export AWS_DEFAULT_REGION ?= us-east-1
export CDK_DEFAULT_REGION ?= us-east-1
export CDK_DEFAULT_ACCOUNT ?= 123456789012

.PHONY: help install lint typecheck unit twin infra e2e test synth demo docs docs-build docs-serve bench prices clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(BIN)/.installed node_modules/.installed ## create .venv and node_modules from the exact pins

lint: install ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy (strict on lambdas/, config/); each handler.py on its own (they share a module name)
	$(BIN)/mypy
	for handler in lambdas/*/handler.py; do $(BIN)/mypy --strict "$$handler" || exit 1; done

unit: install ## unit tests (moto, no network; includes one local Spark run)
	$(BIN)/pytest tests/unit

twin: install ## the twin's own tests: its models on moto, and its fidelity to AWS with the app deployed on it
	$(BIN)/pytest tests/twin

infra: install ## synthesize once; CDK assertions, cdk-nag, cfn-lint, ASL validation, the 50- and 300-pipeline stack limits
	$(BIN)/pytest tests/infra

e2e: install ## every end-to-end test on the local twin, the slow ones too (~12 min on 2 cores)
	$(BIN)/pytest tests/e2e

test: install lint typecheck ## everything CI runs: lint, types, unit, twin, infra, e2e without the `slow` ones (one real Spark run)
	$(BIN)/pytest tests/unit
	$(BIN)/pytest tests/twin
	$(BIN)/pytest tests/infra -m "not slow"
	$(BIN)/pytest tests/e2e -m "not slow"

synth: install ## write cdk.out/ for ENV (default dev)
	cdk synth -c env=$(ENV) --quiet --output cdk.out

demo: synth ## the app end to end on the local twin, with real Spark (needs Java 17+)
	$(BIN)/python -m local.demo --cdk-out cdk.out

docs: install ## regenerate config/schema.json and the config reference (docs/configuration.md)
	$(BIN)/python -m config.docs

docs-build: install ## build the documentation site into site/ (mkdocs --strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: install ## serve the documentation on http://127.0.0.1:8000 while editing docs/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

bench: install ## print benchmark figures (not a test)
	$(BIN)/python bench/run.py

prices: install ## refresh the price table from the AWS Price List API (AWS_PROFILE with pricing:GetProducts; REGIONS=, TYPES=, DRY_RUN=1)
	$(BIN)/python -m config.prices $(if $(REGIONS),--regions $(REGIONS)) $(if $(TYPES),--types $(TYPES)) $(if $(DRY_RUN),--dry-run)

clean: ## remove build outputs (keeps .venv and node_modules)
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache

.PHONY: asl
asl: install ## recompose the workflows into the reviewed snapshots statemachines/rendered/*.asl.json
	$(BIN)/python -m stacks.asl --write
