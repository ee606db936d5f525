# `make demo` and `make test` each create (or refresh) .venv, install what they need, and run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint check bench bench-e2e docs package-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,cli]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/retrysafe demo

# Six pytest-xdist workers on a 2-core machine, tests handed out one by one (worksteal: the
# multi-process chaos and real-clock tests are long). More workers than cores, because most of
# the suite waits on a real clock (Redis and PostgreSQL keep time on the server) rather than
# computes: tests/stores + tests/conformance took 114-132 s with 4 workers against 185-236 s
# with 2, back to back on a loaded 2-core machine, and the whole suite 193 s with 6 against
# 256 s with 4 (CONTRIBUTING.md). Tests are independent:
# each uses its own Redis key prefix, PostgreSQL tables and private-server ports.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 6

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src

check: lint test

docs: $(STAMP)  # the documentation site in site/ (every link and reference must resolve)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

package-check: $(STAMP)  # build, twine check, install the wheel per extra, smoke-test it
	.ci/package-smoke

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Real servers under load, every store and the peers (bench/README.md). Its own virtualenv:
# the peers never enter the project's dependencies. wrk drives the load where installed
# (Debian: apt-get install wrk), else a Python generator. E2E_ARGS='--quick' for a smoke run.
PEERS := bench/.venv-peers
PEERS_STAMP := $(PEERS)/.installed-$(shell cat bench/requirements-peers.txt pyproject.toml | cksum | cut -d' ' -f1)

$(PEERS_STAMP): bench/requirements-peers.txt pyproject.toml
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet -r bench/requirements-peers.txt -e '.[redis,postgres]'
	rm -f $(PEERS)/.installed-*
	touch $@

bench-e2e: $(PEERS_STAMP)
	$(PEERS)/bin/python bench/e2e.py $(E2E_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site dist
