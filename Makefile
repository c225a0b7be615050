# Soma Gateway. `make up` installs what is missing and starts everything; `make test`
# runs the suite against the real local stack. Heavy artefacts live in $(SOMA_HOME).
SHELL := /bin/bash
export SOMA_HOME ?= $(HOME)/.cache/soma-gateway
PY := $(SOMA_HOME)/venv/bin/python

.PHONY: up down test bench bench-peer chaos logs status install install-dev infra lint observe

# What the gateway runs on; install-dev adds what only tests, checks and benchmarks need.
install:
	@bash deploy/install.sh

install-dev:
	@bash deploy/install.sh dev

infra: install
	@bash deploy/infra.sh start

up: infra
	@bash deploy/services.sh start
	@curl -fsS http://127.0.0.1:$${GATEWAY_PORT:-8010}/v1/health; echo
	@echo "bootstrap admin key (also in $(SOMA_HOME)/admin-key): $$(cat $(SOMA_HOME)/admin-key)"

down:
	@bash deploy/observability/observe.sh stop
	@bash deploy/services.sh stop
	@bash deploy/infra.sh stop

status:
	@bash deploy/infra.sh status
	@bash deploy/services.sh status

# Lint, type-check (mypy --strict, see pyproject.toml), then the suite. Each test mesh
# runs in a sandbox of its own (testbed/), so a running `make up` stack is left alone.
# pytest exits non-zero when no test ran (5), so an empty run never passes.
test: install-dev infra
	@PYTHONPATH=$(CURDIR) $(PY) -m ruff check .
	@PYTHONPATH=$(CURDIR) $(PY) -m mypy
	@PYTHONPATH=$(CURDIR) $(PY) -m pytest tests

bench: install-dev infra
	@PYTHONPATH=$(CURDIR) $(PY) -m bench.run $(BENCH_ARGS)

# The gateway beside LiteLLM proxy (pinned, in a venv of its own under $(SOMA_HOME)/bench/,
# installed once), same fake upstream, same arrivals, one run; BENCH_ARGS=--quick etc.
bench-peer: install-dev infra
	@PYTHONPATH=$(CURDIR) $(PY) -m bench.peer $(BENCH_ARGS)

# Faults in a row (kill -9 of a replica of each stage and of an ingress, broker, Redis and
# Postgres restarts, OpenFGA and OPA outages, upstream resets and 5xx) under steady load,
# in a sandbox with its own Kafka and Postgres; one table, also in docs/reliability.md.
# Not part of `make test`; ~10 minutes (CHAOS_ARGS=--quick: ~4).
chaos: install-dev infra
	@PYTHONPATH=$(CURDIR) $(PY) -m bench.chaos $(CHAOS_ARGS)

# A real Prometheus (built once from the Go module proxy) scraping the running gateway,
# after `make up`: waits until every gateway target is UP (deploy/observability/).
observe:
	@bash deploy/observability/observe.sh start

logs:
	@tail -n 20 -F $(SOMA_HOME)/logs/*.log
