# itsmesh — the two commands a new machine needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
STUBS := itsmesh/v1/.generated
PROTOS := $(wildcard protos/itsmesh/v1/*.proto)
PYTEST_ARGS ?=
QUICK ?=

.PHONY: help install protos run infra test test-unit lint bench soak lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml requirements.lock setup.py | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint requirements.lock --editable '.[dev,embedded,otlp]' \
		--config-settings editable_mode=compat
	touch $@

install: $(INSTALLED)  ## create .venv and install everything (pinned by requirements.lock)

$(STUBS): $(PROTOS) $(INSTALLED)
	rm -rf itsmesh && mkdir -p itsmesh/v1
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. $(PROTOS)
	touch itsmesh/__init__.py itsmesh/v1/__init__.py itsmesh/py.typed itsmesh/v1/py.typed $@

protos: $(STUBS)  ## generate the protobuf/gRPC stubs (never committed)

run: $(STUBS)  ## start the whole system and the traffic simulator on embedded infrastructure (Ctrl-C stops it)
	$(VENV)/bin/itsmesh up --simulate

infra: $(STUBS)  ## start only the embedded PostgreSQL, Redis and Kafka-protocol broker
	$(VENV)/bin/itsmesh infra

test: $(STUBS)  ## run the whole test suite against real servers
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STUBS)  ## pure-logic tests only (seconds)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STUBS)  ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mesh services infrastructure

bench: $(STUBS)  ## benchmarks against raw baselines; QUICK=1 for the short form
	$(PY) -m tests.perf.run $(if $(QUICK),--quick,)

soak: $(STUBS)  ## long fault run: delivery + memory/fd growth (not in CI); ITSMESH_SOAK_DURATION_S=600
	$(PY) -m tests.perf.soak

lock: | $(PY)  ## re-resolve requirements.lock from pyproject.toml
	rm -rf /tmp/itsmesh-lock && $(PYTHON) -m venv /tmp/itsmesh-lock
	/tmp/itsmesh-lock/bin/pip install --quiet --upgrade pip
	/tmp/itsmesh-lock/bin/pip install --quiet '.[dev,embedded,otlp]'
	/tmp/itsmesh-lock/bin/pip freeze --exclude itsmesh | grep -v '^-e' > requirements.lock

clean:  ## remove the virtualenv, generated stubs and local data
	rm -rf $(VENV) itsmesh build *.egg-info .itsmesh
