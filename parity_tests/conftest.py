"""Shared fixtures. The Keras backend is fixed per pytest process by KERAS_BACKEND (the Makefile runs
the suite once per backend); tests marked `keras` carry the backend in their ids."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

# numpy with 4 KB pages in this process (where nothing imported numpy before) and the processes it starts, as the
# Makefile sets it for `make test` (see the Makefile: fresh transparent huge pages fault in slowly on our machines).
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
import numpy as np
import pytest

from twins_cli.parity.launch import thread_env
from twins_cli.parity.memory import HEAVY_LOCK_ENV, PARITY_ENV, HeavyLock

BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tensorflow without its oneDNN pool, which keeps its high-water mark (`twins_cli.parity.memory`), in this process
# and the parity workers: read when tensorflow is imported, before any test imports it.
for _name, _value in PARITY_ENV.items():
    os.environ.setdefault(_name, _value)
# Two processes share the cores through a pass, this one and the session worker (`parity_tests/workers.py`), and
# every framework sizes its thread pools to all of them: each process gets its share instead (`thread_env`; the
# report's parity workers side by side ran 20-24 % faster so), the `twins` processes the tests start inherit it,
# and jax's compilations keep one set of XLA flags, so the persistent cache serves both processes. A user's own
# settings are kept.
# What the environment said before (the user's own settings), for `share_cores`.
USER_ENV = dict(os.environ)
CORES = os.cpu_count() or 1
os.environ.update(thread_env(max(1, CORES // 2)))

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
MODELS = RESNETS + ["alexnet", "vgg11_bn", "squeezenet1_0", "densenet121", "inception_v3", "vgg19_slim",
                    "saliency_unet"]
# The models whose torch twin carries torchvision's keys (`torchvision_manifest.json`); vgg19_slim's are
# TF-slim's variable names, tested against those in test_vgg_slim.py; saliency_unet's the seed's `Unet`, tested
# against the seed's own class in test_saliency.py.
TORCHVISION_MODELS = [m for m in MODELS if m not in ("vgg19_slim", "saliency_unet")]
# Registered, but not in the per-model contract tests above (their outputs are a tuple, or their checks are their
# seed's): SimCLR's twins, whose loads, outputs, bridge and input errors are in test_simclr.py.
SIMCLR_MODELS = ["simclr_ssl", "simclr_sl"]
# Also outside the per-model contract: PSPNet, whose output is a map of its own size rule ((H - 1) / 8 * zoom + 1)
# and whose training mode returns (logits, aux logits); its contract is in test_pspnet.py.
PSPNET_MODELS = ["pspnet"]


def output_shape(name: str, batch: int, size: int, classes: int, layout: str) -> tuple:
    """What a model returns for a (batch, 3, size, size) input: logits (batch, classes) for a classifier, a map
    of the input's size with `classes` channels for saliency_unet, in the twin's layout ("nchw" / "nhwc")."""
    from twins import registry

    if registry.get(name).task == "saliency":
        return (batch, classes, size, size) if layout == "nchw" else (batch, size, size, classes)
    return (batch, classes)


def contract_size(name: str) -> int:
    """The input size of the per-model contract tests: 64, or the model's minimum where it is larger."""
    from twins import registry

    return max(64, registry.get(name).min_input_size)


# Builder options of the contract tests' gradient checks: inception's aux head needs 299x299 in
# training mode, so the contract (64-75 px) trains it without; the parity engine trains it with.
GRADIENT_OPTIONS = {"inception_v3": {"aux_logits": False}, "saliency_unet": {"frozen": ()}}
# Keras contract tests (output shape, every parameter's gradient) that run in the tensorflow pass only,
# for DESIGN.md's test budget: op-by-op on jax and torch densenet121 and inception_v3 take 15-30 s a
# test; resnet34 shares every line of code with resnet18, resnet101/152 with resnet50 (DESIGN.md's rule
# for the larger variant), and resnet50's Bottleneck blocks train on every backend in saliency_unet's
# parity rows (its layer3 and layer4); vgg19_slim is 143 M parameters at 224x224; saliency_unet's every parameter gets
# its gradient compared with torch's on every backend in its parity rows (those that train by default).
# On every backend their eval outputs are compared with torch's by the parity tests.
TENSORFLOW_PASS_ONLY = ("resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "inception_v3",
                        "vgg19_slim", "saliency_unet")


# The larger ResNet variants (DESIGN.md: where two variants share every line of code, the larger may get
# eval-output parity in `make test`): their Keras output shape, stage taps and gradients are resnet18's and
# resnet50's code with more blocks. `make test` compares their eval outputs and stage taps with torch's on
# every backend (QUICK_SUITE) and their Keras variable names with torchvision's; these three Keras contract
# tests (40 s of the tensorflow pass) are left to resnet18 and resnet50.
LARGER_VARIANTS = ("resnet34", "resnet101", "resnet152")


def keras_contract_build(name: str, **kwargs):
    """`keras_impl.build` for the Keras contract tests (and the tests that need a twin with realistic values, not
    particular ones). On jax the initial values are drawn by numpy from their initializers' distributions
    (`keras_impl.common.initial_values_drawn_by_numpy`, as the parity engine's): a `jax.random` draw compiles a
    program for each new variable shape, and a model's first build cost 10 s (squeezenet1_0) where numpy took
    0.6 s. The tests ask for shapes, finite outputs and non-zero gradients of the twin as built, whichever values
    it starts from."""
    import contextlib

    import keras_impl
    from keras_impl.common import initial_values_drawn_by_numpy

    with initial_values_drawn_by_numpy(0) if BACKEND == "jax" else contextlib.nullcontext():
        return keras_impl.build(name, **kwargs)


def skip_off_tensorflow(model_name: str, *, larger_variants: bool = False) -> None:
    """`larger_variants`: the test is one of those LARGER_VARIANTS leave to resnet18 / resnet50."""
    if larger_variants and model_name in LARGER_VARIANTS:
        pytest.skip(f"{model_name} shares this Keras contract's code with resnet18/resnet50 (LARGER_VARIANTS); "
                    "its eval outputs and stage taps are compared with torch's on every backend")
    if model_name in TENSORFLOW_PASS_ONLY and BACKEND != "tensorflow":
        pytest.skip(f"{model_name}'s Keras contract tests run in the tensorflow pass (TENSORFLOW_PASS_ONLY)")
MANIFEST = Path(__file__).with_name("torchvision_manifest.json")


def torchvision_state_dict(name: str) -> list[tuple[str, tuple]]:
    """`[(key, shape), ...]` of torchvision's own model, in its state_dict order
    (`torchvision_manifest.json`, written by tools/torchvision_manifest.py)."""
    entry = json.loads(MANIFEST.read_text())["models"][name]
    return [(key, tuple(shape)) for key, shape in entry["state_dict"]]


def torchvision_parameter_count(name: str) -> int:
    return json.loads(MANIFEST.read_text())["models"][name]["parameters"]


def model_params(models=MODELS):
    """Parametrize over models with ids like `resnet50-jax`."""
    return pytest.mark.parametrize("model_name", models, ids=[f"{m}-{BACKEND}" for m in models])


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(autouse=True)
def release_framework_memory(request):
    """After every Keras test, drop what it left in the process (`twins_cli.parity.release_memory`), and JAX's
    compiled programs once the process holds more than 2 GiB. Without this the pytest process of the jax pass
    grows past 5 GB over the in-process tests; with all but the compiled programs released, to 3.9 GB (and the
    session worker's heavy tasks beside it took the pass to 8.3 GiB)."""
    yield
    if request.node.get_closest_marker("keras") is not None:
        from twins_cli.parity import release_memory

        release_memory(compiled_above_gib=2.0)


# ----------------------------------------------------------------------------------------------
# The session's parity workers (parity_tests/workers.py): started as soon as the tests are collected, so that
# they compute beside the in-process tests; the tests that read their rows run after those.

WORKERS = {"parity_worker": None, "torch_export_worker": None}
SUMMARY: dict = {}


def pytest_terminal_summary(terminalreporter):
    """What the session's workers did (jobs, rows, seconds, and on jax the persistent compile cache's hits), and
    the pytest process's own cache hits, at the end of the pass."""
    lines = [line for worker in WORKERS.values() if worker is not None for line in worker.summary]
    if "jax_cache" in SUMMARY:
        lines.append(f"[parity] the pytest process: {SUMMARY['jax_cache'].describe()}")
    if lines:
        terminalreporter.write_sep("-", "session workers")
        for line in lines:
            terminalreporter.write_line(line)


def _start_workers(items) -> None:
    from parity_tests.workers import Worker

    wanted = {name for item in items for name in getattr(item, "fixturenames", ()) if name in WORKERS}
    if "parity_worker" in wanted:
        WORKERS["parity_worker"] = Worker.for_pass(BACKEND)
    if "torch_export_worker" in wanted:
        WORKERS["torch_export_worker"] = Worker.torch_exports()
    from parity_tests.gpu_rehearsal import ENV as REHEARSAL_ENV

    if os.environ.get(REHEARSAL_ENV) and any("gpu_rehearsal" in getattr(item, "fixturenames", ()) for item in items):
        from parity_tests.gpu_rehearsal import Rehearsal

        REHEARSAL["run"] = Rehearsal()  # started once the workers have finished (`pytest_runtest_setup`)
        items[0].session.config.add_cleanup(REHEARSAL["run"].close)  # also when the session stops before its test


# The GPU table's rehearsal (`parity_tests/gpu_rehearsal.py`): a background process of the pass's tail.
REHEARSAL: dict = {"run": None}


@pytest.fixture(scope="session")
def explained(tmp_path_factory):
    """The report's `twins explain all` (build_report's step, a subprocess) over a parity file of one row: the
    pages test_explain.py checks and the documentation site's test (test_docs.py) builds with. Once per session:
    the vgg19_slim-named page test runs at the end of the run, which would end a module fixture and make it again
    (39 s)."""
    import io

    from twins_cli.report import explain_pages

    out = tmp_path_factory.mktemp("report")
    (out / "parity.json").write_text(json.dumps([{"model": "resnet50", "backend": "jax", "check": "eval_output",
                                                  "error": 3e-7, "bound": 1e-5, "passed": True, "detail": ""}]))
    log = io.StringIO()
    table = explain_pages(out, log)
    return out / "explain", table, log.getvalue()


@pytest.fixture(scope="session")
def gpu_rehearsal():
    rehearsal = REHEARSAL["run"]
    assert rehearsal is not None, "the rehearsal was not prepared at collection (conftest._start_workers)"
    yield rehearsal
    rehearsal.close()


def _worker_fixture(name: str):
    @pytest.fixture(scope="session", name=name)
    def fixture():
        worker = WORKERS[name]
        assert worker is not None, f"{name} was not started at collection (conftest._start_workers)"
        yield worker
        worker.close()

    return fixture


parity_worker = _worker_fixture("parity_worker")
torch_export_worker = _worker_fixture("torch_export_worker")


@pytest.fixture(scope="session", autouse=True)
def frameworks_imported_once():
    """Import the frameworks and move what the imports made out of every later garbage collection (`gc.freeze`):
    the collection after each Keras test then scans what the tests made, not the frameworks' own objects (a
    fixture, so that pytest captures what tensorflow prints when it loads)."""
    import gc

    import keras  # noqa: F401
    import torch  # noqa: F401

    if BACKEND == "jax":  # the pass's summary says how often JAX's persistent cache served a compilation
        from twins_cli.compile_cache import JaxCacheCounter

        SUMMARY["jax_cache"] = JaxCacheCounter.install()
    gc.collect()
    gc.freeze()


# A test marked `heavy` (it holds several copies of a big network, or starts a process that does) runs while no
# worker runs a heavy task, and the reverse: they share one lock file (`twins_cli.parity.memory.HeavyLock`). The
# heavy tests run first (`rank`), and the session takes the lock before it starts the workers, so they run
# beside the workers' light tasks.
HEAVY = HeavyLock(None)


def heavy(item) -> bool:
    return item.get_closest_marker("heavy") is not None


def pytest_sessionstart(session):
    import tempfile

    if HEAVY_LOCK_ENV not in os.environ:
        os.environ[HEAVY_LOCK_ENV] = os.path.join(tempfile.mkdtemp(prefix="twins-heavy-"), "lock")
        session.config.add_cleanup(lambda: shutil.rmtree(os.path.dirname(os.environ.pop(HEAVY_LOCK_ENV)), True))
    HEAVY.path = os.environ[HEAVY_LOCK_ENV]


def big_in_process(item) -> bool:
    """A test that builds vgg19_slim in the pytest process: a Keras VGG-19 leaves ~1.4 GB behind on
    tensorflow that neither `clear_session` nor `malloc_trim` returns, so these run last, once the workers
    have finished."""
    return "vgg19_slim" in item.name or "zoo_vgg19" in item.name


def rank(item) -> int:
    """0: the tests marked `heavy` (vgg19_slim trained from the slim checkpoint in a `twins` process, ~4 GB), first,
    while the pytest process is small; 1: the tests that run while the workers compute; 2: those that read the
    workers' results; 3: the ones that grow the pytest process the most, after the workers have finished; 4: the
    GPU rehearsal's test, which waits for the rehearsal started beside the tests of rank 3."""
    if heavy(item):
        return 0
    if "gpu_rehearsal" in getattr(item, "fixturenames", ()):
        return 4  # last: it waits for the rehearsal, which runs beside the tests of rank 3
    if big_in_process(item):
        return 3
    return 2 if any(name in WORKERS for name in getattr(item, "fixturenames", ())) else 1


def pytest_collection_modifyitems(items):
    items.sort(key=rank)


def pytest_collection_finish(session):
    """After `-k` / `-m` have deselected: a worker starts only for the tests that will run."""
    if not session.config.option.collectonly:
        if session.items and heavy(session.items[0]):
            HEAVY.acquire()
        _start_workers(session.items)


def pytest_runtest_teardown(item, nextitem):
    if HEAVY.held and (nextitem is None or not heavy(nextitem)):
        HEAVY.release()


def pytest_runtest_setup(item):
    """A heavy test holds the heavy lock; the tests that grow pytest the most start once the workers have
    finished: the two together would pass DESIGN.md's 8 GB."""
    if heavy(item) and not HEAVY.held:
        HEAVY.acquire()
    if rank(item) >= 3:
        for worker in WORKERS.values():
            if worker is not None:
                worker.wait()
        if REHEARSAL["run"] is not None:
            REHEARSAL["run"].start()
    share_cores()


SHARE = {"threads": None}


def threads_beside(live: set[int], waiting: set[int], cores: int) -> int:
    """Threads for this process's children: all the cores when each live worker is waiting for the heavy lock
    this process holds (`waiting`: empty unless it holds it) or none is live, else half."""
    return cores if live <= waiting else max(1, cores // 2)


def share_cores() -> int:
    """The compute threads of the processes a test starts, and of this process's torch, set before each test:
    half the cores while a session worker computes beside this process, all of them once none does: every worker
    has finished, or each one left waits for the heavy lock this process holds (for the heavy tests, while the
    worker has no light task left), and cannot go on before this process releases it, after its children end.
    One thread each left a core idle for the last ~200 s of the tensorflow pass (the worker done at 825 s, the
    pass at 1034 s) and while the worker waited 168 s for the heavy lock. Returns the threads now."""
    # (the GPU rehearsal is not counted: it runs at the lowest priority, on what the tests leave idle)
    live = {w.proc.pid for w in WORKERS.values() if w is not None and w.proc.poll() is None}
    threads = threads_beside(live, HEAVY.waiting_pids() if HEAVY.held else set(), CORES)
    if threads != SHARE["threads"]:
        SHARE["threads"] = threads
        os.environ.update(thread_env(threads, USER_ENV))
        # and this process's own torch (tensorflow's and XLA's pools are fixed at their start): the tests after
        # the worker's end build and run torch twins in-process (vgg19_slim's, the parity tests' own runs)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return threads
