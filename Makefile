# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build lies on this machine's disk; on a GPU host pass a CUDA build, e.g.
#   make test TORCH_SPEC='torch==2.13.0' TORCH_PIP_ARGS='--index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@echo "make install: creating $(VENV) (if missing) and upgrading pip..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "make install: installing $(TORCH_SPEC) (the largest step: a few minutes, with pip's progress bar)..."
	$(BIN)/python -m pip install --progress-bar on "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	@echo "make install: installing rsclip and its test dependencies (Ray, LanceDB, rasterio, Playwright...)"
	$(BIN)/python -m pip install --progress-bar on -e ".[test]"
	@echo "make install: done"
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the tests that need no Ray, no S3 server and no browser (a few minutes): for iterating
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(BIN)/python infra/demo.py

# The CPU benchmarks (BENCHMARKS.md), each figure the median of 3 interleaved
# rounds with its spread; ~40 minutes on a quiet 2-core machine (measured 2026-12-02: scaling 1.5, query 7,
# embed 21, train 10 with one Ray worker: two workers on two cores have no target and would add ~6), plus
# pipeline ~6 (the embedding job around a stand-in model on 20,000 chips; measured 2026-12-04).
# Each script prints the load average at its start and end: run it on a quiet machine. The JSON lines are
# appended to BENCH_RESULTS; BENCH_ARGS reach every script (e.g. BENCH_ARGS='--repeats 5').
BENCH_RESULTS ?= bench/results/$(shell date +%Y-%m-%d).jsonl
BENCH_ARGS ?=

bench: install
	$(BIN)/python bench/scaling.py --results $(BENCH_RESULTS) $(BENCH_ARGS)
	$(BIN)/python bench/query.py --torch-threads 1 --results $(BENCH_RESULTS) $(BENCH_ARGS)
	$(BIN)/python bench/embed.py --results $(BENCH_RESULTS) $(BENCH_ARGS)
	$(BIN)/python bench/train.py --workers 1 --results $(BENCH_RESULTS) $(BENCH_ARGS)
	$(BIN)/python bench/pipeline.py --chips 20000 --results $(BENCH_RESULTS) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .demo
