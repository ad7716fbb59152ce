# Two entry points (see README): `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install -q torch==2.13.0 -e ".[dev]"

.PHONY: install demo demo-fast test lint

install:
	$(PIP_INSTALL)

demo: install
	$(PYTHON) -m megatron_endprompt.demo $(DEMO_ARGS)

demo-fast: install
	$(PYTHON) -m megatron_endprompt.demo --fast

test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check .
