"""What a parity process holds between models, and how two processes share one memory budget.

- `release_memory()`: drop what a model's checks left in the process, so that the next model starts from what the
  imports left (the parity worker runs every model of a backend in one process; the test suite calls it after
  every Keras test). `between_models=True` also drops JAX's compiled programs (see below), and in a worker
  process (`freeze_between_models`) keeps what is still alive then out of every later collection (`gc.freeze`).
- `HeavyLock`: while one process of the test suite runs a task that holds several float64 copies of a big
  network (pspnet: 49 M parameters, 0.37 GB a copy), another that wants to do the same waits. Both sides name
  the same lock file in `TWINS_HEAVY_LOCK`; without it the lock is always free.

Two things retained memory that no collection returns, measured in one worker running pspnet, the saliency U-Net,
vgg19_slim, vgg11_bn, simclr_ssl, resnet50, densenet121, inception_v3, squeezenet1_0 and resnet18 in that order:
- tensorflow's oneDNN build allocates through a pool that keeps its high-water mark: 2.9 GB held after pspnet's
  checks (0.86 GB before), whatever came next. With `TF_ENABLE_ONEDNN_OPTS=0` (tensorflow's own Eigen kernels)
  1.05 GB, and the ten models' peak 5.6 GB instead of 6.3 GB. The parity worker and the test process run
  tensorflow that way (`PARITY_ENV`); the `twins` commands the tests start, the benchmarks and a user's runs
  keep tensorflow's default.
- JAX keeps every compiled program of a process: 4.2 GB after the ten models. `jax.clear_caches()` between models
  keeps it at 1.4-2.1 GB and costs nothing measurable (138 s against 140 s for the ten): the persistent
  compilation cache (`JAX_COMPILATION_CACHE_DIR`) serves the programs a later model compiles again.
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import os
from pathlib import Path

HEAVY_LOCK_ENV = "TWINS_HEAVY_LOCK"
# The environment of the processes that run the parity checks (see the module docstring).
PARITY_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def release_memory(between_models: bool = False, compiled_above_gib: float | None = None) -> None:
    """Keras' global state, one garbage collection (Keras' `clear_session` would run one of its own: 0.2-0.5 s
    each on jax in a process that has built a few models), and the heap pages glibc keeps mapped after they are
    freed; JAX's compiled programs too `between_models`, or once the process holds more than
    `compiled_above_gib` (the test process: dropping them after every test made the jax pass's in-process tests
    take 360 s instead of 247 s, each test compiling resnet18 again; keeping them all grew it to 3.9 GB)."""
    import keras

    keras.backend.clear_session(free_memory=False)
    on_jax = keras.backend.backend() == "jax"
    if on_jax and between_models:
        import jax

        jax.clear_caches()
    trim_heap()
    if on_jax and not between_models and compiled_above_gib is not None and resident_gib() > compiled_above_gib:
        import jax

        jax.clear_caches()
        trim_heap()
    if between_models and FREEZE_BETWEEN_MODELS:
        gc.freeze()


# Whether `release_memory(between_models=True)` freezes what is alive after its collection (`gc.freeze`): set by
# the worker processes (`freeze_between_models`), whose only business is one model after another. Between two
# models such a process holds only what outlives them: the modules a model's checks imported (tf2onnx, openvino,
# torch's optimisers, Keras' layers...) and the frameworks' caches. A collection walks every object it tracks:
# 330-480 k in a jax worker after resnet18's checks, beside the 334 k it froze after its imports, 0.25-0.47 s a
# collection and ~10 % of its quick plan (8.8 s of 80 over seven models; 3.5 s frozen between models). Frozen,
# they are left out of the next model's collections, which walk what that model made. What is alive then and
# becomes cyclic garbage later is never collected: the pytest process, whose module and session fixtures
# outlive a model and die later, does not freeze (it froze its imports only, conftest).
FREEZE_BETWEEN_MODELS = False


def freeze_between_models() -> None:
    global FREEZE_BETWEEN_MODELS
    FREEZE_BETWEEN_MODELS = True


def resident_gib() -> float:
    """This process's resident memory now (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        return 0.0


def trim_heap() -> None:
    """A garbage collection, then glibc's `malloc_trim`: the pages of freed tensors go back to the system (glibc
    keeps them mapped otherwise; torch and numpy allocate through malloc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class HeavyLock:
    """The lock file named by `TWINS_HEAVY_LOCK` (an exclusive `flock`); without it every acquire succeeds."""

    def __init__(self, path: str | None = None):
        self.path = path if path is not None else os.environ.get(HEAVY_LOCK_ENV)
        self.handle = None

    @property
    def held(self) -> bool:
        return self.handle is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; `blocking`: wait for it, with a marker file beside it that says this process waits
        (`waiting_pids`: the test suite gives its own processes the cores a waiting worker leaves)."""
        if not self.path:
            return True
        handle = open(self.path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                handle.close()
                return False
            marker = Path(f"{self.path}.waiting-{os.getpid()}")
            marker.touch()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            finally:
                marker.unlink(missing_ok=True)
        self.handle = handle
        return True

    def waiting_pids(self) -> set[int]:
        """The processes blocked in `acquire` on this lock file now."""
        if not self.path:
            return set()
        prefix = Path(self.path).name + ".waiting-"
        return {int(p.name[len(prefix):]) for p in Path(self.path).parent.glob(prefix + "*")
                if p.name[len(prefix):].isdigit()}

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
