# Two entry points for people: `make demo` and `make test`. Both build .venv on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit system-deps bench clean

# Debian's python3 ships without ensurepip; install python3-venv when we are root and it is missing.
$(STAMP): pyproject.toml
	@if ! python3 -c 'import ensurepip' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "python3-venv is missing: install it (apt-get install python3-venv)" >&2; exit 1; fi; \
	fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# CI (CI=true) installs the system tools the integration tests drive; elsewhere the tests skip and say why.
system-deps:
	@if [ "$${CI:-}" = true ] && [ "$$(id -u)" = 0 ]; then bash .ci/system-deps; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

test: $(STAMP) system-deps lint typecheck
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(VENV)/bin/ingestd demo

bench: $(STAMP)
	$(PY) -m bench.store_put
	$(PY) -m bench.cpu
	$(PY) -m bench.ingest
	$(PY) -m bench.first_byte
	$(PY) -m bench.catalog
	$(PY) -m bench.audit_anchor

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
