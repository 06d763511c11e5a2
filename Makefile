.DEFAULT_GOAL := demo

# `make demo` and `make test` set up .venv on first use (torch pinned to the CPU build in
# constraints.txt; tensorflow, jax and keras from the registry; the exporters and runtimes of `twins export`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest parity_tests -q -p no:cacheprovider --durations=15
BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL := 3
# JAX compiles every op the first time a process runs it (a Keras model's first build on jax: ~10 s for
# saliency_unet, 0.7 s the second time); the tests, the parity workers and the CLI runs they start are many
# processes building the same models, so they share compiled programs through JAX's persistent cache.
export JAX_COMPILATION_CACHE_DIR := $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS := 0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES := 0

# The browser tests render the report and the `twins explain` pages in headless Chromium, a Debian package.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-backend parity bench clean chromium

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev,export]"
	touch $(STAMP)

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The suite once per Keras backend: everything under tensorflow, then the Keras tests (marker
# `keras`) under jax and torch. The backend is fixed when keras is first imported.
test: $(STAMP) chromium
	KERAS_BACKEND=tensorflow $(PYTEST)
	KERAS_BACKEND=jax $(PYTEST) -m keras
	KERAS_BACKEND=torch $(PYTEST) -m keras

# One backend only: make test-backend BACKEND=jax
test-backend: $(STAMP) chromium
	KERAS_BACKEND=$(BACKEND) $(PYTEST)

# The main job: parity for every model and backend plus a quick benchmark sweep, as one report.
demo: $(STAMP)
	$(PY) -m twins_cli.main report --quick --out reports/latest

# The full parity matrix: every check for every model and variant on every installed backend
# (make test runs a subset for some models, QUICK_SUITE in twins_cli/parity.py, as make demo; see README "Tests").
parity: $(STAMP)
	$(PY) -m twins_cli.main parity all --json reports/parity-all.json

# Throughput of resnet50 on all five backends (GPU when one is visible); see README "Benchmarks".
bench: $(STAMP)
	$(PY) -m benchmarks --models resnet50 --backends all --mode train,infer

clean:
	rm -rf $(VENV) reports .cache
