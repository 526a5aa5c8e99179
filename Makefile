# Every target builds what it needs (.venv, extras, Debian packages) when missing, so each one
# works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SRC := lbproxy
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo build test test-deps check pure fmt lint typecheck pytest bench bench-deps bench-micro load clean

# mypyc compiles these modules (lbproxy/_build.py, setup.py) when the package is installed; a
# change to one of them reinstalls, which rebuilds the extensions beside the sources.
BUILD_INPUTS := pyproject.toml setup.py lbproxy/_build.py $(shell $(PYTHON) lbproxy/_build.py)

# mypyc needs a C compiler and Python's headers (Debian: gcc, python3-dev); without them the
# package installs as pure Python, which works the same, slower (setup.py).
$(BIN)/python:
	@$(PYTHON) -c 'import os, shutil, sys, sysconfig; \
		sys.exit(not (shutil.which("cc") and os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")))' || \
		{ $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq gcc python3-dev; } || \
		echo "no C compiler or Python headers: lbproxy will run pure Python"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: $(BUILD_INPUTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BUILD_INPUTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-bench: $(BUILD_INPUTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/lbproxy demo

# The package with its compiled hot path, rebuilt when a compiled module changed.
build: $(VENV)/.installed-run

# The suite on the compiled build (what ships), then again on pure Python (LBPROXY_PURE=1: what
# runs where there is no C compiler, and the reference the compiled build must match).
test: test-deps check pure

# Debian packages the tests drive for real: nginx (benchmarks run briefly), prometheus and promtool
# (a real scrape of /metrics), chromium (the status page in a headless browser). The tests that
# need one skip, saying why, where it cannot be had.
test-deps:
	@missing=""; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -z "$$missing" ] || \
		{ $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq --no-install-recommends $$missing; } || \
		echo "could not install$$missing: the tests that need them will be skipped"

check: $(VENV)/.installed-dev
	$(BIN)/ruff format --check $(SRC) tests bench
	$(BIN)/ruff check $(SRC) tests bench
	$(BIN)/mypy --strict $(SRC)
	$(BIN)/pytest

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest

pure: $(VENV)/.installed-dev
	LBPROXY_PURE=1 $(BIN)/pytest -q

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format $(SRC) tests bench
	$(BIN)/ruff check --fix $(SRC) tests bench

bench-deps:
	@missing=""; \
	for tool in nginx wrk haproxy; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	[ -z "$$missing" ] || \
		{ $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq $$missing; }

bench: $(VENV)/.installed-bench bench-deps
	$(BIN)/python bench/sidebyside.py $(BENCH_ARGS)

# Locust against `lbproxy demo` (started and stopped by bench/load.py) for LOAD_ARGS or 30 s;
# CSV files and an HTML report under bench/results/load/.
load: $(VENV)/.installed-bench
	$(BIN)/python bench/load.py $(LOAD_ARGS)

# Micro-benchmarks (pytest-benchmark) of the hot path's parts; each run is saved under
# bench/results/micro/ and compared with the last one saved there (from the second run on).
MICRO_STORAGE := bench/results/micro
bench-micro: $(VENV)/.installed-bench
	@if ls $(MICRO_STORAGE)/*/*.json >/dev/null 2>&1; then compare=--benchmark-compare; \
	else compare=; echo "bench-micro: no saved run in $(MICRO_STORAGE) yet: nothing to compare with"; fi; \
	$(BIN)/pytest bench/micro --benchmark-autosave --benchmark-storage=$(MICRO_STORAGE) \
		--benchmark-columns=min,median,iqr,ops,rounds $$compare $(MICRO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache lbproxy/*.so *__mypyc.*.so
