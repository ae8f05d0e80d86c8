# Steward — the two commands a newcomer needs are `make run` and `make test`.

SHELL  := bash
CARGO  ?= cargo
PYENV  := target/pyenv
PYTHON := $(PYENV)/bin/python

.PHONY: run run-postgres build test lint fmt fmt-check clippy unit pydeps bench demo clean-dev help

help:
	@echo "make run    start all four services on SQLite with a generated dev PKI"
	@echo "make run-postgres  two replicas of each on PostgreSQL behind local balancers"
	@echo "make test   fmt check, clippy -D warnings, unit and integration tests"
	@echo "            (again on PostgreSQL when STEWARD_TEST_DATABASE_URL is set)"
	@echo "make bench  baseline benchmarks (release build)"
	@echo "make demo   the incident story, narrated, against a running \`make run\`"
	@echo "make fmt    format the code"

## run: create the dev PKI if missing and run the four services until Ctrl-C
run: build
	./target/debug/steward dev up

## run-postgres: two replicas of each service on PostgreSQL behind local
## balancers (a throwaway server unless POSTGRES_URL names one)
run-postgres: build
	./target/debug/steward dev up --postgres $(POSTGRES_URL)

build:
	$(CARGO) build --bins

## test: everything CI runs
test: fmt-check clippy pydeps build
	@mkdir -p target && rm -f target/test-*.log
	@echo "== the suite on SQLite"
	set -o pipefail; env -u STEWARD_TEST_DATABASE_URL $(CARGO) test --workspace --all-targets 2>&1 | tee target/test-sqlite.log
	@if [ -n "$$STEWARD_TEST_DATABASE_URL" ]; then \
		echo "== the suite again on PostgreSQL"; \
		set -o pipefail; $(CARGO) test --workspace --all-targets 2>&1 | tee target/test-postgres.log; \
	fi
	@awk '/^test result:/ { passed += $$4; failed += $$6 } \
		END { printf "\ntests: %d passed, %d failed\n", passed, failed; exit (failed > 0 || passed == 0) }' target/test-*.log

lint: fmt-check clippy

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## pydeps: a virtualenv with grpcio, for the test that proves a client we
## did not write can connect
pydeps: $(PYENV)/.installed

$(PYENV)/.installed: integration-tests/python/requirements.txt
	python3 -m venv $(PYENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r integration-tests/python/requirements.txt
	touch $@

## demo: the incident story against `make run` (in another terminal)
demo: build
	./deploy/demo/demo.sh

## bench: the services' release binaries too (the replicas figure runs them
## as processes)
bench:
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p steward-integration-tests --bin steward-bench

clean-dev:
	./target/debug/steward dev reset
