.DEFAULT_GOAL := demo

# `make demo` and `make test` set up .venv on first use (torch pinned to the CPU build in
# constraints.txt; tensorflow, jax and keras from the registry; the exporters and runtimes of `twins export`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The project and its dependencies (.installed), then the examples (.installed-examples), each redone when its own
# files change: a .venv made before an example was added installs just the example.
BASE_STAMP := $(VENV)/.installed
STAMP := $(VENV)/.installed-examples
PYTEST_ARGS := parity_tests -q -p no:cacheprovider --durations=15
PYTEST := $(PY) -m pytest $(PYTEST_ARGS)
# The passes of `make test`: everything under tensorflow, then the Keras tests (marker `keras`) under jax and torch.
PASS_tensorflow :=
PASS_jax := -m keras
PASS_torch := -m keras
BACKEND ?= tensorflow
export TF_CPP_MIN_LOG_LEVEL := 3
# numpy asks the kernel for transparent huge pages for every array of 4 MB or more (madvise). On this project's
# 2-core virtual machines a huge page that was not touched recently is slow to fault in: a fresh 2 GB numpy array
# took 28.5 s (24.7 s of it in the kernel) against 1.5 s with 4 KB pages; tensorflow's, torch's and jax's own
# allocations do not ask. The parity checks, the bridge and the checkpoint readers are numpy: every process the
# make targets start keeps 4 KB pages (docs/tests.md). `NUMPY_MADVISE_HUGEPAGE=1 make ...` restores numpy's default.
export NUMPY_MADVISE_HUGEPAGE ?= 0
# JAX compiles every op the first time a process runs it (a Keras model's first build on jax: ~10 s for
# saliency_unet, 0.7 s the second time); the tests, the parity workers and the CLI runs they start are many
# processes building the same models, so they share compiled programs through JAX's persistent cache.
export JAX_COMPILATION_CACHE_DIR := $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS := 0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES := 0

# The documentation site's one script from a CDN, iframe-worker's shim (the offline search), from the npm registry
# (see `docs` below); defined before the targets that name it, which expand it as they are read.
DOCS_SHIM := .cache/docs/iframe-worker-shim.js
IFRAME_WORKER := iframe-worker@1.0.4
export NO_MKDOCS_2_WARNING := 1

# The browser tests render the report and the `twins explain` pages in headless Chromium, a Debian package.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: docs demo test test-backend test-profile print-passes parity bench bench-gpu bench-gpu-plan bench-gpu-rehearse \
	bench-gpu-wheels test-gpu-rehearsal clean chromium

# The MobileNetV2 example (docs/port-your-own-model.md) is installed as a user installs their own twin pair: a
# package of its own whose `twins.models` entry point registers it, so every tool and `make test` see it.
EXAMPLES := examples/mobilenet_v2

$(BASE_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev,export,docs]"
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP) $(addsuffix /pyproject.toml,$(EXAMPLES))
	$(PY) -m pip install -q -c constraints.txt --no-deps $(addprefix -e ,$(EXAMPLES))
	touch $(STAMP)

chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The suite once per Keras backend: everything under tensorflow, then the Keras tests (marker
# `keras`) under jax and torch. The backend is fixed when keras is first imported. The three passes share the
# torch twin's recorded training steps (`twins_cli.parity.store.Recordings`: the same whichever Keras backend they
# are compared with) in a folder of this run's, removed at its end whatever the outcome.
test: $(STAMP) chromium $(DOCS_SHIM)
	rec=$$(mktemp -d /tmp/twins-recordings-XXXXXX) && trap 'rm -rf "$$rec"' EXIT && \
	export TWINS_PARITY_RECORDINGS="$$rec" && \
	TWINS_GPU_REHEARSAL=1 KERAS_BACKEND=tensorflow $(PYTEST) $(PASS_tensorflow) && \
	KERAS_BACKEND=jax $(PYTEST) $(PASS_jax) && \
	KERAS_BACKEND=torch $(PYTEST) $(PASS_torch)

# Where the time of `make test` goes: the same passes under py-spy, each test's time, written as
# docs/test-profile.md beside the profile before the fast-feedback change (docs/profile/before.json).
test-profile: $(STAMP) chromium
	$(PY) -m pip install -q -c constraints.txt py-spy
	$(PY) tools/test_profile.py run reports/test-profile
	$(PY) tools/test_profile.py summarize reports/test-profile --label "$$(git rev-parse --short HEAD)"
	$(PY) tools/test_profile.py render docs/profile/before.json reports/test-profile/summary.json

print-passes:
	@echo "tensorflow: $(PYTEST_ARGS) $(PASS_tensorflow)"
	@echo "jax: $(PYTEST_ARGS) $(PASS_jax)"
	@echo "torch: $(PYTEST_ARGS) $(PASS_torch)"

# One backend only: make test-backend BACKEND=jax
test-backend: $(STAMP) chromium
	KERAS_BACKEND=$(BACKEND) $(PYTEST)

# The documentation site (README "Documentation"): Markdown under docs/, the model cards and the `twins explain`
# pages generated at build time (tools/docs_hooks.py), built strict (a broken link or a missing page fails) into
# site/, readable offline from file:// (Material's offline plugin; no fonts or scripts from a CDN). The one script
# the offline search loads from a CDN, iframe-worker's shim, comes from the npm registry once and is served from
# the site itself.

$(DOCS_SHIM):
	mkdir -p $(@D) && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack -q $(IFRAME_WORKER) >/dev/null && tar xzf iframe-worker-*.tgz package/shim/index.js) && \
	mv "$$tmp/package/shim/index.js" $@

docs: $(STAMP) $(DOCS_SHIM)
	$(PY) -m mkdocs build --strict --site-dir site
	@echo "the site: file://$(CURDIR)/site/index.html"

# The main job: parity for every model and backend plus a quick benchmark sweep, as one report.
demo: $(STAMP)
	$(PY) -m twins_cli.main report --quick --out reports/latest

# The full parity matrix: every check for every model and variant on every installed backend
# (make test runs a subset for some models, QUICK_SUITE in twins_cli/parity.py, as make demo; see docs/tests.md).
parity: $(STAMP)
	$(PY) -m twins_cli.main parity all --json reports/parity-all.json

# Throughput of resnet50 on all five backends (GPU when one is visible); see docs/benchmarks.md.
bench: $(STAMP)
	$(PY) -m benchmarks --models resnet50 --backends all --mode train,infer

# The GPU table (docs/gpu-table.md), one part per GPU loan. Here, with the package registry: the plan and its
# estimate, the rehearsal of every part on this CPU at toy sizes, and the wheels the GPU machine's image lacks (.whl/).
# On the GPU machine (its own python3 with CUDA torch and jax, no registry, no .venv; .whl/ brought along):
#   make bench-gpu [PART=n] [PREVIOUS=gpu.json of earlier parts, comma-separated] [GPU_OUT=folder]
GPU_PYTHON ?= python3
PART ?= 1
GPU_OUT ?= reports/gpu
GPU_WHEELS := keras namex optree

bench-gpu-plan: $(STAMP)
	$(PY) -m benchmarks.gpu plan

bench-gpu-rehearse: $(STAMP)
	$(PY) -m benchmarks.gpu run --profile rehearsal --part all --out reports/gpu-rehearsal

# The rehearsal's test alone (alexnet, both runs, dynamo's eager backend); make test runs it in its tensorflow pass.
test-gpu-rehearsal: $(STAMP)
	TWINS_GPU_REHEARSAL=1 $(PY) -m pytest parity_tests/test_gpu_table.py -q -p no:cacheprovider

bench-gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
		$$($(PY) -c "import importlib.metadata as m; print(' '.join(n + '==' + m.version(n) for n in '$(GPU_WHEELS)'.split()))")

# The GPU machine's python has no .venv: the examples are registered from the working tree (TWINS_PLUGINS).
bench-gpu:
	PYTHONPATH=$(subst $(eval) ,:,$(abspath $(EXAMPLES)))$${PYTHONPATH:+:$$PYTHONPATH} \
	TWINS_PLUGINS=twins_mobilenet_v2.register$${TWINS_PLUGINS:+,$$TWINS_PLUGINS} \
	$(GPU_PYTHON) -m benchmarks.gpu run --part $(PART) --out $(GPU_OUT) $(if $(PREVIOUS),--previous $(PREVIOUS))

clean:
	rm -rf $(VENV) reports .cache
