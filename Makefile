# Sluice: the two commands a newcomer needs are `make demo` and `make test`.
# Everything they need is installed here: a virtualenv with the pinned packages
# (requirements.lock) and, on first use, the Kafka broker jars from Maven Central.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SLUICE := $(VENV)/bin/sluice
STAMP  := $(VENV)/.installed

.PHONY: help setup tools demo test test-unit test-integration up down bench bench-quick lock clean

help:
	@echo "make demo    run the demo on the embedded defaults (starts and stops what it needs)"
	@echo "make test    run every test (starts a real Kafka broker and embedded ClickHouse itself)"
	@echo "make up      start the local stack (Kafka broker, topics, ClickHouse tables); make down stops it"
	@echo "make bench   run the benchmarks (make bench-quick for a smoke run)"

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

setup: $(STAMP)
	$(PY) -c "from sluice.config import Settings; from sluice.local.kafka import fetch_kafka_jars; print('kafka jars:', fetch_kafka_jars(Settings().sluice_cache))"

demo: setup
	$(SLUICE) demo

# Debian tools the tests run for real (promtool, chromium, wrk...), installed when missing.
tools:
	deploy/local/ensure-tools

# Two test processes, each with its own broker and ClickHouse engine; a file's tests stay in
# one process (--dist loadfile), so a module's fixtures start once. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: setup tools
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests/integration

up: setup
	$(SLUICE) up

down: $(STAMP)
	$(SLUICE) down

bench: setup tools
	$(PY) -m bench

bench-quick: setup tools
	$(PY) -m bench --quick

# Re-pin after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis bench/results
