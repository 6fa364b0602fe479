# The two commands: `make run` (the platform on 127.0.0.1:8000) and `make test` (the suite).
# See README.md. Every target creates .venv and installs the pinned requirements when needed.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstalled only when a requirements file is newer than this stamp.
STAMP := $(VENV)/.installed
PIP_FLAGS := --disable-pip-version-check --progress-bar off --quiet
export VENV

.PHONY: help run test lint migrate bootstrap broker-config check-services install bench web-assets

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	@echo "Installing requirements-dev.txt (with requirements.txt) into $(VENV)..."
	$(BIN)/pip install $(PIP_FLAGS) -r requirements-dev.txt
	touch $@

install: $(STAMP) ## Create .venv and install the pinned requirements (runtime and dev)

# A local development configuration, written once (never overwritten): .env.example with
# DEBUG=1 and a random SECRET_KEY uncommented. Delete .env to get a fresh one.
.env: | .env.example
	@key=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))'); \
	{ echo "# Written by 'make run' from .env.example for LOCAL development: DEBUG=1 below is for"; \
	  echo "# a local demo only, never for a server. SECRET_KEY is random and private to this checkout."; \
	  echo; \
	  sed -e "s|^# DEBUG=.*|DEBUG=1|" -e "s|^# SECRET_KEY=.*|SECRET_KEY=$$key|" .env.example; } > $@.tmp
	@mv $@.tmp $@
	@echo "Created .env (DEBUG=1, random SECRET_KEY) from .env.example."

check-services: $(STAMP) ## Check that PostgreSQL, Redis, the Celery broker and MQTT answer
	$(BIN)/python scripts/check_services.py

migrate: $(STAMP) .env ## Create the database if missing, migrate the public and every tenant schema
	$(BIN)/python scripts/check_services.py --create-database
	$(BIN)/python manage.py migrate_schemas

bootstrap: migrate ## Public tenant, platform superuser, demo tenant on demo.localhost (idempotent)
	$(BIN)/python manage.py bootstrap_platform

# The Procfile's broker: config and dynamic-security.json in var/mosquitto (idempotent; keeps devices).
broker-config: $(STAMP) .env ## Write the platform broker's config into var/mosquitto (port IIOT_MQTT_PORT, 1884)
	$(BIN)/python manage.py mqtt_broker_config --dir var/mosquitto

# Front-end packages (htmx, uPlot) from package-lock.json into node_modules/, served as static files.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

web-assets: node_modules/.package-lock.json ## Install the dashboards' front-end packages (npm ci)

run: bootstrap broker-config web-assets ## Check services, migrate, bootstrap, then start the Procfile on 127.0.0.1:IIOT_HTTP_PORT (8000)
	bash scripts/run.sh

# The suite creates its own database (test_iiot) and pins its settings in pyproject.toml
# (pytest-env): it never reads .env.
test: $(STAMP) ## Run the whole test suite (PYTEST_ARGS="-k name" to narrow it)
	$(BIN)/python scripts/check_services.py
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check .

# Its own database (iiot_bench, dropped before and after) and broker; BENCH_ARGS="--quick" for ~2 minutes.
bench: $(STAMP) ## Ingest and storage benchmark (several minutes); last line is one JSON object
	$(BIN)/python bench/run.py $(BENCH_ARGS)
