# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build lies on this machine's disk; on a GPU host pass a CUDA build, e.g.
#   make test TORCH_SPEC='torch==2.13.0' TORCH_PIP_ARGS='--index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the tests that need no Ray, no S3 server and no browser (a few minutes): for iterating
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(BIN)/python infra/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .demo
