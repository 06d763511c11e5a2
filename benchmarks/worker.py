"""Measure one backend, inside its own process. `benchmarks.harness` starts one per backend:

    KERAS_BACKEND=jax python -m benchmarks.worker --job job.json --result rows.json

Why a process per backend: Keras fixes its backend when it is imported (KERAS_BACKEND), and each
framework keeps process-wide state (CUDA context, allocator pools, jax's GPU memory preallocation,
compiled-function caches) that would distort the next backend's numbers. Everything that must be set
before a framework initialises (KERAS_BACKEND, CUDA_VISIBLE_DEVICES, JAX_PLATFORMS) arrives in the
environment from the harness; this module sets no environment variable. The torch backends never
import keras, and the Keras backends configure their framework (TF32, device checks) before
importing keras.

What one step is, per backend and mode (synthetic data, created on the device once):
- torch / torch-compile, train: `zero_grad`, forward, cross-entropy on random integer labels,
  backward, `SGD(lr=1e-4, momentum=0.9).step()` (timm's benchmark uses the same optimiser and lr).
  torch-compile wraps the same module in `torch.compile` (default mode, inductor); the optimiser step
  stays eager. infer: `model.eval()` under `torch.inference_mode()`.
  bfloat16 = `torch.autocast(device_type, dtype=torch.bfloat16)` around forward and loss.
  `--channels-last` converts module and batch to `torch.channels_last`.
- keras-*, train: the model's own compiled path, what `fit` runs per batch:
  `model.compile(optimizer=SGD(1e-4, momentum=0.9), loss=SparseCategoricalCrossentropy(
  from_logits=True), jit_compile="auto")` then `model.train_on_batch(x, y)`.
  infer: `model.predict_on_batch(x)` on the same compiled model: the single-batch form of
  `predict`, through Keras' predict function (XLA where `jit_compile` resolved to True), and the
  path a Keras user deploys without leaving Keras. It returns numpy, so the step includes copying
  the logits (batch x 1000 floats) to the host; the torch rows leave them on the device.
  `jit_compile="auto"` resolves, per Keras' own rules, to XLA on jax, to XLA on tensorflow only
  when a GPU is visible (plain tf.function on a CPU-only machine), and to eager on the torch
  backend; the `compiler` column says what it resolved to. keras-torch-jit is keras-torch compiled with
  `jit_compile=True`: Keras wraps its train and predict steps in `torch.compile` (inductor), measured as
  it is.
  bfloat16 = the `mixed_bfloat16` dtype policy (bfloat16 compute, float32 variables).
- A model with several outputs (or a segmentation map) gets one cross-entropy per output, summed,
  with labels shaped like the output minus its class axis; it is a stand-in objective that costs
  what the real one costs, not the model's training recipe.

Timing: every step is followed by a device synchronisation before the clock is read
(`torch.cuda.synchronize()`; Keras' `train_on_batch`/`predict_on_batch` already return host values,
and the worker then also waits on the updated variables: `jax.block_until_ready`, or a `.numpy()`
read on tensorflow). The first `warmup` steps (tracing, compilation, autotuning) are excluded; the
first one is reported as `first_step_ms` so the compile cost stays visible. Then `repeats` steps are
timed one by one; the row holds their median, min and max. The timed steps hold the run's gate
exclusively (`benchmarks.gate`): no other worker computes while they run. The warm-up does not: on a
CPU the harness lets the next worker prepare beside this one, so `first_step_ms` may share the cores.

Peak memory (`peak_mem_mb`, `peak_mem_source` says which): on CUDA the framework allocator's peak
during the row (torch.cuda.max_memory_allocated, tf get_memory_info()["peak"], jax memory_stats
peak_bytes_in_use), counted from before the model is built, so weights, optimiser state,
activations and workspace are all in it. jax cannot reset its peak counter, so the harness gives
keras-jax on CUDA one worker per row. On CPU: the worker process's peak resident set size
(getrusage ru_maxrss), reset before each row through /proc/self/clear_refs; it includes the
framework's own resident memory (libraries, thread pools) and heap that allocators kept from the
worker's earlier rows, not just this row's tensors: compare CPU figures across backends with that in
mind, and across rows of one backend only roughly.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import glob
import importlib
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback

from benchmarks import report, schema
from benchmarks.gate import Gate
from twins_cli.precision import set_tf32

LEARNING_RATE = 1e-4
MOMENTUM = 0.9
SEED = 0


class Unavailable(Exception):
    """The backend cannot run here at all (package missing, no GPU); every row gets `status`."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def progress(message: str) -> None:
    print(f"{schema.PROGRESS_PREFIX} {message}", file=sys.stderr, flush=True)


def write_json_atomic(path: str, payload) -> None:
    report.write_atomic(path, json.dumps(payload, indent=1))


def describe_exception(exc: BaseException, limit: int = 400) -> str:
    """`Type: first lines` — enough to tell a compiler failure from an OOM without the traceback
    (the full traceback goes to the worker's stderr, kept in the harness's log)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " | ".join(lines[:3])
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def classify_exception(exc: BaseException, dtype: str) -> str:
    text = f"{type(exc).__name__} {exc}"
    lowered = text.lower()
    if (
        isinstance(exc, MemoryError)
        or "out of memory" in lowered
        or "resource_exhausted" in lowered
        or "resourceexhausted" in lowered
        or "outofmemory" in lowered
    ):
        return schema.STATUS_OOM
    if dtype == "bfloat16" and "bfloat16" in lowered:
        return schema.STATUS_UNSUPPORTED_DTYPE
    return schema.STATUS_ERROR


# ---------------------------------------------------------------------------------------------
# Host memory: peak RSS of this process, reset per row.


class ProcessPeakRss:
    """`ru_maxrss` is a high-water mark for the whole process; writing "5" to /proc/self/clear_refs
    (Linux >= 4.0) resets it to the current RSS, so each row reports its own peak."""

    def __init__(self):
        self.resettable = False

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def read_mb(self) -> float:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB
        return peak_bytes / 2**20

    @property
    def source(self) -> str:
        if self.resettable:
            return "cpu: peak RSS of the worker process during this row (ru_maxrss)"
        return "cpu: peak RSS of the worker process since it started (ru_maxrss; could not reset)"


# This worker's `gate.Gate` (the job's "gate" file; none: it never waits): `run_job` holds it shared from the
# start, and `time_steps` holds it exclusively around the timed steps.
GATE = Gate(None)


def time_steps(step, sync, warmup: int, repeats: int):
    """`(first_step_ms, [step_ms, ...])`: warm-up steps run untimed except the first, which is
    reported separately (it carries tracing/compilation); then `repeats` timed steps, with the
    cores to this worker alone (`GATE.timed()`: every other worker of the run waits), after one
    more untimed step there when a gate is in use (what waiting for it left cold is warm again, and
    the worker that ran last has settled)."""
    first_ms = None
    # With a timed-only gate (`benchmarks.gpu`) only the first step (the compilation) runs beside other workers; the
    # other warm-up steps run holding the gate, right before the timed ones.
    beside = warmup if not GATE.timed_only else 1
    for i in range(beside):
        start = time.perf_counter()
        with GATE.first_step() if i == 0 else contextlib.nullcontext():
            step()
            sync()
        if i == 0:
            first_ms = (time.perf_counter() - start) * 1e3
    times = []
    with GATE.timed():
        # Waited at the gate, maybe long, while another worker ran: at least one more step, untimed.
        for _ in range(max(warmup - beside, 1 if GATE.path else 0)):
            step()
            sync()
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return first_ms, times


def timed_calls(config: dict, options: dict) -> int:
    """Timed steps of a row: `repeats`, or `latency_calls` for a latency row (batch 1, many short calls)."""
    return options["latency_calls"] if config["mode"] == "latency" else options["repeats"]


def percentile(times: list[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between the closest ranks (numpy's default): p50 is the
    median the throughput figures use."""
    if not times:
        return None
    ordered = sorted(times)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def flatten_outputs(out) -> list:
    """Tensors of a model output that may be a tensor, a (named)tuple, a list or a dict."""
    if isinstance(out, dict):
        return [leaf for value in out.values() for leaf in flatten_outputs(value)]
    if isinstance(out, (list, tuple)):
        return [leaf for value in out for leaf in flatten_outputs(value)]
    return [out]


def map_task(model: str) -> bool:
    """A model whose training loss is MSE on a map (the saliency U-Net), not cross-entropy over classes."""
    from twins import registry

    return model != schema.PEER_MODEL and registry.get(model).task == "saliency"


def class_axis_error(model: str, shape) -> ValueError:
    return ValueError(
        f"the benchmark's loss is cross-entropy over a class axis; {model} returned an output of "
        f"shape {tuple(shape)}, expected (batch, classes, ...) in torch / (batch, ..., classes) in Keras"
    )


# ---------------------------------------------------------------------------------------------
# torch and torch-compile


def require(module: str, backend: str):
    """Import a framework, or report the backend as not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(schema.STATUS_NOT_INSTALLED, f"{backend} needs {module}: {exc}") from None


def setup_torch(backend: str, cuda: bool, tf32: bool, compile_backend: str | None = None):
    """Import torch for a torch or keras-torch worker: CUDA present if asked for, TF32 as asked.
    `compile_backend` (the rehearsal's option, `benchmarks.gpu`): every `torch.compile` of the process,
    Keras' own included, uses that dynamo backend instead of inductor (`aot_eager`: the same graph capture
    and autograd split, no code generation; `eager`: the graph capture alone), and dynamo compiles each frame once
    (`cache_size_limit` 1: a frame Keras runs for every layer, such as `Layer.__call__`, is otherwise recompiled
    for each of its first eight layers, most of a keras-torch-jit row's first step on the CPU)."""
    torch = require("torch", backend)
    if compile_backend:
        import functools

        import torch._dynamo

        torch.compile = functools.partial(torch.compile, backend=compile_backend)
        torch._dynamo.config.cache_size_limit = 1
    if cuda and not torch.cuda.is_available():
        raise Unavailable(
            schema.STATUS_NO_GPU,
            f"--device cuda was asked, but torch {torch.__version__} sees no CUDA device "
            f"(torch.cuda.is_available() is False; torch.version.cuda={torch.version.cuda})",
        )
    set_tf32("torch", tf32)
    # cuDNN autotuning: tensorflow and XLA autotune convolutions by default, torch only with this.
    torch.backends.cudnn.benchmark = True
    return torch


class TorchRunner:
    def __init__(self, backend: str, options: dict):
        self.backend = backend
        self.options = options
        self.compiled = backend == "torch-compile"
        cuda = options["device"] == "cuda"
        torch = setup_torch(backend, cuda, options["tf32"], options.get("compile_backend"))
        import torch_impl

        self.torch = torch
        self.torch_impl = torch_impl
        if cuda and options["dtype"] == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise Unavailable(
                schema.STATUS_UNSUPPORTED_DTYPE,
                f"bfloat16 was asked, but {torch.cuda.get_device_name()} does not support it in torch",
            )
        self.device = torch.device("cuda" if cuda else "cpu")
        self.compiler = f"{options.get('compile_backend') or 'inductor'} (torch.compile)" if self.compiled else "eager"
        self.host_memory = ProcessPeakRss()
        self.device_name = torch.cuda.get_device_name() if cuda else "cpu"

    def versions(self) -> dict:
        return {"torch": self.torch.__version__}

    def _autocast(self):
        if self.options["dtype"] == "bfloat16":
            return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def measure(self, config: dict) -> dict:
        torch = self.torch
        cuda = self.device.type == "cuda"
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.host_memory.reset()
        if self.compiled:
            torch._dynamo.reset()  # a fresh compile per row, never a cached graph from another row
        torch.manual_seed(SEED)

        batch, size = config["batch"], config["img_size"]
        model = self.torch_impl.build(config["model"]).to(self.device)
        x = torch.randn(batch, 3, size, size, device=self.device)
        if self.options["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters())
        forward = torch.compile(model) if self.compiled else model

        if config["mode"] == "train":
            model.train()
            # One untimed eager forward to learn the output shapes the labels must match.
            with torch.no_grad(), self._autocast():
                outputs = flatten_outputs(model(x))
            labels = []
            maps = map_task(config["model"])
            for out in outputs:
                if out.ndim < 2:
                    raise class_axis_error(config["model"], out.shape)
                labels.append(torch.rand(out.shape, device=self.device) if maps else
                              torch.randint(0, out.shape[1], (out.shape[0], *out.shape[2:]), device=self.device))
            del outputs
            optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
            # The model's own loss: cross-entropy over classes; MSE against a target map (saliency_unet).
            criterion = torch.nn.functional.mse_loss if maps else torch.nn.functional.cross_entropy

            def step():
                optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    outs = flatten_outputs(forward(x))
                    loss = sum(criterion(out, label) for out, label in zip(outs, labels))
                loss.backward()
                optimizer.step()

        else:
            model.eval()

            def step():
                with torch.inference_mode(), self._autocast():
                    forward(x)

        first_ms, times = time_steps(step, self._sync, self.options["warmup"], timed_calls(config, self.options))
        if cuda:
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
            source = "cuda: torch.cuda.max_memory_allocated during this row"
        else:
            peak_mb, source = self.host_memory.read_mb(), self.host_memory.source
        return {
            "times": times,
            "first_step_ms": first_ms,
            "params": params,
            "peak_mem_mb": peak_mb,
            "peak_mem_source": source,
            "compiler": self.compiler,
            "step": step,  # for a profile of the warm step (`profile_steps`), not part of the row
            "sync": self._sync,
        }

    def cleanup(self) -> None:
        gc.collect()
        if self.compiled:
            self.torch._dynamo.reset()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Keras on tensorflow, jax or torch


class KerasRunner:
    def __init__(self, backend: str, options: dict):
        self.backend = backend
        self.options = options
        self.framework = schema.KERAS_BACKEND_ENV[backend]
        given = os.environ.get("KERAS_BACKEND")
        if given != self.framework:
            raise RuntimeError(
                f"the {backend} worker needs KERAS_BACKEND={self.framework} in its environment "
                f"(Keras reads it once, at import); got KERAS_BACKEND={given!r}"
            )
        self.cuda = options["device"] == "cuda"
        self.host_memory = ProcessPeakRss()
        self._versions = {}
        # The framework is configured before keras is imported, so Keras starts on a configured one.
        getattr(self, f"_setup_{self.framework}")()
        keras = require("keras", backend)
        if keras.backend.backend() != self.framework:
            raise RuntimeError(
                f"Keras started on backend {keras.backend.backend()!r}, expected {self.framework!r}"
            )
        if options["dtype"] == "bfloat16":
            keras.config.set_dtype_policy("mixed_bfloat16")
        import keras_impl

        self.keras = keras
        self.keras_impl = keras_impl
        self._versions["keras"] = keras.__version__

    def _setup_tensorflow(self) -> None:
        tf = require("tensorflow", self.backend)
        self.tf = tf
        self._versions["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if self.cuda and not gpus:
            raise Unavailable(
                schema.STATUS_NO_GPU,
                f"--device cuda was asked, but tensorflow {tf.__version__} sees no GPU "
                f"(tf.config.list_physical_devices('GPU') is empty; built with CUDA: "
                f"{tf.test.is_built_with_cuda()})",
            )
        set_tf32("tensorflow", self.options["tf32"])
        self.device_name = (
            tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU:0")
            if self.cuda
            else "cpu"
        )

    def _setup_jax(self) -> None:
        jax = require("jax", self.backend)
        self.jax = jax
        self._versions["jax"] = jax.__version__
        if self.cuda and jax.default_backend() != "gpu":
            raise Unavailable(
                schema.STATUS_NO_GPU,
                f"--device cuda was asked, but jax {jax.__version__} sees no GPU "
                f"(jax.devices() = {jax.devices()}; a CUDA build of jax, e.g. jax[cuda12], is needed)",
            )
        set_tf32("jax", self.options["tf32"])
        self.device_name = jax.devices()[0].device_kind if self.cuda else "cpu"

    def _setup_torch(self) -> None:
        torch = setup_torch(self.backend, self.cuda, self.options["tf32"], self.options.get("compile_backend"))
        self.torch = torch
        self._versions["torch"] = torch.__version__
        self.device_name = torch.cuda.get_device_name() if self.cuda else "cpu"

    def versions(self) -> dict:
        return dict(self._versions)

    # -- per-backend device placement, synchronisation and memory counters --------------------

    def _to_device(self, array):
        if self.framework == "tensorflow":
            with self.tf.device("/GPU:0" if self.cuda else "/CPU:0"):
                return self.tf.identity(self.tf.constant(array))
        if self.framework == "jax":
            # On the default device, uncommitted, like Keras' own variables: a batch committed with
            # jax.device_put(x, device) made Keras' jitted step compile a second time on its second
            # call (seen on jax 0.10.2), which put a compilation into the first timed step.
            return self.jax.numpy.asarray(array)
        return self.keras.ops.convert_to_tensor(array)  # Keras' torch backend picks cuda if visible

    def _sync_fn(self, model):
        variables = model.trainable_variables
        smallest = min(variables, key=lambda v: math.prod(v.shape)) if variables else None
        if self.framework == "jax":
            return lambda: self.jax.block_until_ready([v.value for v in model.variables])
        if self.framework == "tensorflow":
            # A device-to-host read is queued behind every kernel the step launched.
            return (lambda: smallest.value.numpy()) if smallest is not None else (lambda: None)
        if self.cuda:
            return self.torch.cuda.synchronize
        return lambda: None

    def _reset_memory(self) -> None:
        self.host_memory.reset()
        if not self.cuda:
            return
        if self.framework == "tensorflow":
            self.tf.config.experimental.reset_memory_stats("GPU:0")
        elif self.framework == "torch":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        # jax has no reset; the harness runs keras-jax on CUDA with one worker per row instead.

    def _read_memory(self):
        if not self.cuda:
            return self.host_memory.read_mb(), self.host_memory.source
        if self.framework == "tensorflow":
            peak = self.tf.config.experimental.get_memory_info("GPU:0")["peak"]
            return peak / 2**20, "cuda: tf.config.experimental.get_memory_info('GPU:0')['peak'] during this row"
        if self.framework == "jax":
            stats = self.jax.devices()[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
            return (
                None if peak is None else peak / 2**20,
                "cuda: jax memory_stats()['peak_bytes_in_use'] of a worker that measured only this row",
            )
        return self.torch.cuda.max_memory_allocated() / 2**20, "cuda: torch.cuda.max_memory_allocated during this row"

    def _compiler(self, model) -> str:
        jit = bool(model.jit_compile)
        return {
            "tensorflow": "XLA (jit_compile=True)" if jit else "tf.function (jit_compile=False)",
            "jax": "XLA (jax.jit)" if jit else "jax, no jit (jit_compile=False)",
            "torch": (f"torch.compile{' ' + self.options['compile_backend'] if self.options.get('compile_backend') else ''}"
                      " (jit_compile=True)") if jit else "eager (jit_compile=False)",
        }[self.framework]

    def _build(self, config: dict):
        keras = self.keras
        if config["model"] == schema.PEER_MODEL:
            size = config["img_size"]
            # Logits, like our twins: the loss is computed from_logits.
            return keras.applications.ResNet50(
                weights=None, input_shape=(size, size, 3), classifier_activation=None
            )
        return self.keras_impl.build(config["model"])

    def measure(self, config: dict) -> dict:
        import numpy as np

        keras = self.keras
        keras.backend.clear_session()
        gc.collect()
        self._reset_memory()
        keras.utils.set_random_seed(SEED)
        rng = np.random.default_rng(SEED)

        batch, size = config["batch"], config["img_size"]
        model = self._build(config)
        # Every parameter, frozen ones too (saliency_unet freezes its encoder's first stages), as torch counts
        # `model.parameters()`; BatchNorm's running statistics are buffers there, not parameters.
        params = sum(int(np.prod(v.shape)) for v in model.weights if v.name not in ("moving_mean", "moving_variance"))
        x_host = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
        spec = model.compute_output_spec(keras.KerasTensor(x_host.shape))
        for out in keras.tree.flatten(spec):
            if len(out.shape) < 2:
                raise class_axis_error(config["model"], out.shape)
        maps = map_task(config["model"])
        y_host = keras.tree.map_structure(
            lambda out: rng.random(tuple(out.shape), dtype=np.float32) if maps else
            rng.integers(0, out.shape[-1], size=tuple(out.shape[:-1]), dtype=np.int32), spec
        )
        loss = keras.tree.map_structure(
            lambda out: keras.losses.MeanSquaredError() if maps else
            keras.losses.SparseCategoricalCrossentropy(from_logits=True), spec
        )
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM),
            loss=loss,
            jit_compile=True if self.backend in schema.KERAS_JIT_BACKENDS else "auto",
        )
        x = self._to_device(x_host)
        y = keras.tree.map_structure(self._to_device, y_host)
        sync = self._sync_fn(model)

        if config["mode"] == "train":
            step = lambda: model.train_on_batch(x, y)  # noqa: E731
        else:
            step = lambda: model.predict_on_batch(x)  # noqa: E731

        first_ms, times = time_steps(step, sync, self.options["warmup"], timed_calls(config, self.options))
        peak_mb, source = self._read_memory()
        return {
            "times": times,
            "first_step_ms": first_ms,
            "params": params,
            "peak_mem_mb": peak_mb,
            "peak_mem_source": source,
            "compiler": self._compiler(model),
            "step": step,
            "sync": sync,
        }

    def cleanup(self) -> None:
        self.keras.backend.clear_session()
        gc.collect()
        if self.cuda and self.framework == "torch":
            self.torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Export runtimes: the artifact `twins export` writes, run where it ships


def artifact_key(model: str, size: int) -> str:
    return f"{model}-{size}"


def artifact_paths(backend: str, model: str, size: int, folder: str) -> tuple[str, str]:
    """Where the artifact of export backend `backend` for `model` at `size` lives in `folder`, and its report
    (`twins export --json`): under `twins.exports.artifact_stem`, the name the parity run keeps its own under."""
    from twins import exports

    framework, keras_backend, fmt = schema.EXPORT_SOURCES[backend]
    stem = os.path.join(folder, exports.artifact_stem(model, size, framework, fmt, keras_backend))
    return stem + exports.FORMATS[framework][fmt], stem + ".json"


def kept_artifact(backend: str, model: str, size: int, folder: str) -> dict | None:
    """The artifact already in `folder` whose report says it passed its check against the eager twin (the parity
    run leaves resnet18's there in `make demo`: `twins_cli.parity.run_parity(keep_exports=)`): what the report
    says and the artifact's path; None when there is none, or its check did not pass."""
    path, report_path = artifact_paths(backend, model, size, folder)
    if not (os.path.exists(report_path) and os.path.exists(path)):
        return None
    exported = _read_report(report_path)
    return {**exported, "path": path} if exported.get("check", {}).get("passed") else None


def _read_report(report_path: str) -> dict:
    with open(report_path) as f:
        return json.load(f)


def export_artifact(backend: str, model: str, size: int, folder: str) -> dict:
    """`twins export` of `model` at `size` in the format of export backend `backend`, in a subprocess, into
    `folder`: what it reports (`--json`) and the artifact's path, or `{"error": why}` when it failed or its check
    against the eager twin did. Imports no framework (the harness calls it too)."""
    import subprocess

    framework, keras_backend, fmt = schema.EXPORT_SOURCES[backend]
    path, report_path = artifact_paths(backend, model, size, folder)
    command = [sys.executable, "-m", "twins_cli.main", "export", model, "--framework", framework, "--format", fmt,
               "--out", path, "--img-size", str(size), "--json", report_path]
    if keras_backend:
        command += ["--backend", keras_backend]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if not os.path.exists(report_path):
        tail = " | ".join(line for line in (done.stderr or "").strip().splitlines()[-3:])
        return {"error": f"twins export exited {done.returncode}: {tail[-600:]}"}
    exported = _read_report(report_path)
    if done.returncode != 0 or not exported.get("check", {}).get("passed"):
        return {"error": f"the exported {fmt} artifact failed its check against the eager twin: "
                         f"{exported.get('check')}"}
    return {**exported, "path": path}


class ExportRunner:
    """One export backend (`schema.EXPORT_SOURCES`). Per model and size, `twins export` has run in a subprocess
    of the harness before any worker measured (`export_artifact`, `harness.prepare_exports`: this process's peak
    RSS is the runtime's, not the exporter's), written the artifact into the harness's folder and checked it
    against the eager twin at batch 3 and 1; the row carries that error
    (`export_error`) and the artifact's size on disk. A step is one `Runtime.run(x)` call on a host batch:
    these runtimes take and return host memory, so the step includes what the runtime copies."""

    def __init__(self, backend: str, options: dict):
        from twins import exports

        self.backend = backend
        self.options = options
        self.exports = exports
        self.framework, self.keras_backend, self.format = schema.EXPORT_SOURCES[backend]
        self.host_memory = ProcessPeakRss()
        self.device_name = "cpu"
        self.compiler = None
        self._versions: dict = {}

    def versions(self) -> dict:
        return dict(self._versions)

    def _export(self, model: str, size: int) -> dict:
        """The artifact of `model` at `size` the harness made before any worker measured (`options["artifacts"]`,
        `harness.prepare_exports`); an export that failed there raises what went wrong."""
        prepared = self.options.get("artifacts", {}).get(artifact_key(model, size))
        if prepared is None:
            raise RuntimeError(f"no {self.format} artifact of {model} at {size}x{size} was made for this worker "
                               "(the harness exports before the workers start)")
        if "error" in prepared:
            raise RuntimeError(prepared["error"])
        return prepared

    def measure(self, config: dict) -> dict:
        import numpy as np

        exported = self._export(config["model"], config["img_size"])
        gc.collect()
        self.host_memory.reset()
        runtime = self.exports.open_runtime(self.format, exported["path"])
        self._versions[runtime.name] = runtime.version
        self.compiler = runtime.version
        size, batch = config["img_size"], config["batch"]
        shape = (batch, 3, size, size) if self.framework == "torch" else (batch, size, size, 3)
        x = np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)
        first_ms, times = time_steps(lambda: runtime.run(x), lambda: None, self.options["warmup"],
                                     timed_calls(config, self.options))
        peak_mb = self.host_memory.read_mb()
        return {
            "times": times,
            "first_step_ms": first_ms,
            "params": None,
            "peak_mem_mb": peak_mb,
            "peak_mem_source": self.host_memory.source + "; the runtime with the artifact loaded",
            "compiler": runtime.version,
            "artifact_mb": exported["bytes"] / 1e6,
            "export_error": exported["check"]["error"],
        }

    def cleanup(self) -> None:
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Where a row's time goes: a profile of its warm step (`benchmarks.gpu` asks for the rows of a missed target)

PROFILED_STEPS = 3
PROFILE_TOP = 15


def _top_table(totals: dict, counts: dict, what: str) -> list[str]:
    whole = sum(totals.values()) or 1.0
    lines = [f"| {what} | total ms | calls | share |", "|---|--:|--:|--:|"]
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1])[:PROFILE_TOP]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short.replace('|', '/')}` | {total:.2f} | {counts[name]} | {100 * total / whole:.1f} % |")
    return lines


def profile_torch(step, sync, cuda: bool) -> list[str]:
    """torch.profiler over `PROFILED_STEPS` warm steps: the top kernels by device time (CUDA), or the top ops by
    CPU time without a GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(PROFILED_STEPS):
            step()
            sync()
    wall_ms = (time.perf_counter() - start) * 1e3
    totals, counts = collections.defaultdict(float), collections.defaultdict(int)
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        value = device_us if cuda else event.self_cpu_time_total
        if value:
            totals[event.key] += value / 1e3
            counts[event.key] += event.count
    what = "kernel (self device time)" if cuda else "op (self CPU time)"
    return [f"{PROFILED_STEPS} steps in {wall_ms:.1f} ms of wall time; the profiled "
            f"{'device' if cuda else 'CPU'} time sums to {sum(totals.values()):.1f} ms", ""] + _top_table(totals, counts, what)


def profile_jax(step, sync) -> list[str]:
    """jax.profiler's trace of `PROFILED_STEPS` warm steps (its Perfetto JSON), summed per event name: the device
    streams' events when the trace has any, else the host's."""
    import gzip

    import jax

    with tempfile.TemporaryDirectory(prefix="twins-jax-profile-") as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(PROFILED_STEPS):
                step()
                sync()
        wall_ms = (time.perf_counter() - start) * 1e3
        traces = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)
        if not traces:
            return [f"{PROFILED_STEPS} steps in {wall_ms:.1f} ms; jax's profiler wrote no Perfetto trace"]
        with gzip.open(traces[0], "rt") as f:
            events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in names.items() if "gpu" in name.lower() or "device" in name.lower()}
    totals, counts = collections.defaultdict(float), collections.defaultdict(int)
    for e in events:
        if e.get("ph") != "X" or (device and e.get("pid") not in device):
            continue
        totals[e.get("name", "?")] += float(e.get("dur", 0)) / 1e3
        counts[e.get("name", "?")] += 1
    what = "device event" if device else "host event"
    return [f"{PROFILED_STEPS} steps in {wall_ms:.1f} ms of wall time; {what}s sum to {sum(totals.values()):.1f} ms "
            "(nested host events count more than once)", ""] + _top_table(totals, counts, what)


def profile_steps(backend: str, options: dict, measured: dict) -> list[str]:
    if schema.KERAS_BACKEND_ENV.get(backend) == "jax":
        return profile_jax(measured["step"], measured["sync"])
    return profile_torch(measured["step"], measured["sync"], options["device"] == "cuda")


def wants_profile(options: dict, config: dict, row: dict) -> bool:
    """A row asked for by key, or one slower than `ratio` x the reference rows the run has measured so far (the
    `below` file the run keeps: {"model|mode|dtype": samples/s of native torch}), when it names this backend."""
    wanted = options.get("profile") or {}
    if [config["model"], config["backend"], config["mode"], options["dtype"]] in wanted.get("keys", []):
        return True
    below = wanted.get("below")
    if not below or config["backend"] not in below["backends"] or not row.get("samples_per_sec"):
        return False
    try:
        with open(below["file"]) as f:
            reference = json.load(f).get(f"{config['model']}|{config['mode']}|{options['dtype']}")
    except (OSError, ValueError):
        return False
    return bool(reference) and row["samples_per_sec"] < below["ratio"] * reference


# ---------------------------------------------------------------------------------------------


def make_runner(backend: str, options: dict):
    if backend in schema.TORCH_BACKENDS:
        return TorchRunner(backend, options)
    if backend in schema.KERAS_BACKENDS:
        return KerasRunner(backend, options)
    if backend in schema.EXPORT_BACKENDS:
        return ExportRunner(backend, options)
    raise ValueError(f"unknown backend {backend!r}; expected one of: {', '.join(schema.BACKENDS)}")


def finished_row(config: dict, options: dict, measured: dict) -> dict:
    row = schema.empty_row(config, options)
    times = measured["times"]
    median = statistics.median(times) if times else None
    row.update(
        samples_per_sec=config["batch"] / (median / 1e3) if median else None,
        step_ms_median=median,
        step_ms_min=min(times) if times else None,
        step_ms_max=max(times) if times else None,
        peak_mem_mb=measured["peak_mem_mb"],
        params_m=None if measured.get("params") is None else measured["params"] / 1e6,
        latency_ms_p50=percentile(times, 50),
        latency_ms_p90=percentile(times, 90),
        latency_ms_p99=percentile(times, 99),
        artifact_mb=measured.get("artifact_mb"),
        export_error=measured.get("export_error"),
        status=schema.STATUS_OK,
        first_step_ms=measured["first_step_ms"],
        compiler=measured["compiler"],
        peak_mem_source=measured["peak_mem_source"],
        steps_timed=len(times),
    )
    return row


def row_summary(row: dict) -> str:
    return (f"{row['samples_per_sec']:.1f} samples/s, median step {row['step_ms_median']:.2f} ms, first step "
            f"{(row['first_step_ms'] or 0) / 1e3:.1f} s, compiler {row['compiler']}")


def run_job(job: dict, result_path: str) -> None:
    global GATE
    backend, options, configs = job["backend"], job["options"], job["configs"]
    # Preparing, beside other workers' preparation: the gate the harness took for this process and passed on, held
    # until it exits (or, run without one, taken now, before the framework's import).
    GATE = Gate(job.get("gate"), fd=job.get("gate_fd"), since=job.get("gate_since"),
                timed_only=bool(job.get("gate_timed_only")))
    GATE.shared()
    rows: list[dict] = []
    worker_info = {"backend": backend, "pid": os.getpid(), "versions": {}, "device_name": None}

    def save():
        write_json_atomic(result_path, {"worker": worker_info, "rows": rows})

    progress(f"{backend}: importing and configuring the framework")
    try:
        runner = make_runner(backend, options)
    except Unavailable as exc:
        progress(f"{backend}: cannot run here: {exc.message}")
        rows.extend(schema.failed_row(c, options, exc.status, exc.message) for c in configs)
        save()
        return
    except Exception as exc:  # a broken install fails every row the same way
        traceback.print_exc()
        status = schema.STATUS_NOT_INSTALLED if isinstance(exc, ImportError) else schema.STATUS_ERROR
        message = f"{backend} failed to start: {describe_exception(exc)}"
        rows.extend(schema.failed_row(c, options, status, message) for c in configs)
        save()
        return
    # What the imports made stays for the process's life: out of every later collection (`gc.freeze`). Each row
    # collects before it is measured and after (Keras' `clear_session` once more each time): 0.3-0.4 s a
    # collection with a framework imported, ~1.4 s of a Keras row's preparation; frozen, they walk what the rows made.
    gc.collect()
    gc.freeze()
    worker_info["versions"] = runner.versions()
    worker_info["device_name"] = runner.device_name
    worker_info["gate"] = GATE.intervals  # when it held the gate, and how (the harness checks them)
    save()

    for config in configs:
        label = f"{backend}: {config['model']} {config['mode']} batch {config['batch']} img {config['img_size']}"
        progress(f"{label}: measuring ({options['warmup']} warm-up + {timed_calls(config, options)} timed steps)")
        try:
            measured = runner.measure(config)
            row = finished_row(config, options, measured)
            progress(
                f"{label}: {row['samples_per_sec']:.2f} samples/s, median step {row['step_ms_median']:.1f} ms"
                + (f" (p90 {row['latency_ms_p90']:.1f}, p99 {row['latency_ms_p99']:.1f})" if config["mode"] == "latency" else "")
                + (f", first step {row['first_step_ms']:.0f} ms" if row["first_step_ms"] is not None else "")
            )
        except Exception as exc:
            traceback.print_exc()
            status = classify_exception(exc, options["dtype"])
            row = schema.failed_row(config, options, status, describe_exception(exc))
            row["compiler"] = getattr(runner, "compiler", None)
            progress(f"{label}: {status}: {row['error']}")
        rows.append(row)
        save()
        if row["status"] == schema.STATUS_OK and wants_profile(options, config, row):
            title = f"{config['model']} {backend} {config['mode']} {options['dtype']} batch {config['batch']}"
            try:
                with GATE.timed():  # profiled steps run alone too: another worker may be timing
                    lines = profile_steps(backend, options, measured)
            except Exception as exc:  # a profile is extra; its failure is said where the profile would be
                traceback.print_exc()
                lines = [f"the profile failed: {describe_exception(exc)}"]
            path = os.path.join(options["profile"]["dir"], f"profile-{backend}-{config['model']}-{config['mode']}-{options['dtype']}.md")
            report.write_atomic(path, "\n".join([f"## {title}", "", row_summary(row), ""] + lines) + "\n")
            progress(f"{label}: profiled {PROFILED_STEPS} steps")
        measured = None
        try:
            runner.cleanup()
        except Exception:  # cleanup is best effort; the next row resets its own counters
            traceback.print_exc()
    # Held until the process has exited (the kernel drops it after the process's memory is gone); what the worker
    # can witness of that last hold ends with its last write.
    worker_info["gate_held"] = [GATE.since, time.monotonic()]
    save()


def probe(result_path: str) -> None:
    """Which accelerators torch and jax see, for `--device auto` and the run's metadata. Run in its
    own process so the harness never holds a CUDA context or jax's preallocated GPU memory."""
    found = {"torch_cuda": False, "jax_gpu": False, "gpu_names": [], "cuda_version": None}
    try:
        import torch

        found["torch_cuda"] = torch.cuda.is_available()
        found["cuda_version"] = torch.version.cuda
        if found["torch_cuda"]:
            found["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    if not found["torch_cuda"]:
        try:
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            found["jax_gpu"] = bool(gpus)
            found["gpu_names"] = [d.device_kind for d in gpus]
        except (ImportError, RuntimeError):
            pass
    write_json_atomic(result_path, found)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.worker",
        description="Measure one backend (started by benchmarks.harness; not meant to be run by hand).",
    )
    parser.add_argument("--job", help="JSON file: {backend, options, configs}")
    parser.add_argument("--result", required=True, help="where to write the rows (JSON, atomically)")
    parser.add_argument("--probe", action="store_true", help="only report which accelerators are visible")
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.result)
        return 0
    if not args.job:
        parser.error("--job is required unless --probe is given")
    with open(args.job) as f:
        job = json.load(f)
    run_job(job, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
