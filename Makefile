# Two entry points (see README): `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
TORCH_VERSION = 2.13.0
# PyPI's torch for Linux x86_64 is the CUDA build (plus ~3 GB of nvidia-* wheels); PyTorch's CPU index has the
# ~180 MB CPU build. TORCH_INDEX is passed to pip as an extra index, where pip prefers 2.13.0+cpu to PyPI's 2.13.0.
TORCH_CPU_INDEX = https://download.pytorch.org/whl/cpu
# Default: the CPU index when it answers within 3 s, else nothing (pip's own configuration decides: PyPI or a
# local mirror). `make install TORCH_INDEX=` forces pip's configuration (e.g. for a CUDA torch); any URL works.
TORCH_INDEX ?= $(shell $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3); print(sys.argv[1])' $(TORCH_CPU_INDEX)/ 2>/dev/null)
PIP_INSTALL = $(PYTHON) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[dev]"

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
