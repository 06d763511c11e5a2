"""The benchmark's vocabulary, shared by the harness, the workers and the report: backend names,
modes, dtypes, the columns every result row carries, and the status words a row may hold.

Framework-free on purpose: the harness (parent process) imports it without importing torch, keras,
tensorflow or jax, so no framework state (a CUDA context, jax's GPU memory preallocation) ever
lives in the parent while a worker is measuring.
"""
from __future__ import annotations

# Order matters: it is the order of the rows in every table and of the bars in the chart.
TORCH_BACKENDS = ("torch", "torch-compile")
KERAS_BACKENDS = ("keras-tensorflow", "keras-jax", "keras-torch", "keras-torch-jit")
# The Keras backends compiled with `jit_compile=True` rather than Keras' "auto" (which leaves the torch backend
# eager): keras-torch-jit is the same Keras twin on the torch backend through Keras' torch.compile path.
KERAS_JIT_BACKENDS = ("keras-torch-jit",)
# Deployment runtimes: a twin exported by `twins export` (in a subprocess of the worker, which then holds only
# the runtime) and run where it ships. backend -> (twin, Keras backend that exports it, export format).
EXPORT_SOURCES = {
    "torch-export": ("torch", None, "pt2"),
    "onnxruntime": ("torch", None, "onnx"),
    "onnxruntime-keras": ("keras", "tensorflow", "onnx"),
    "tf-saved-model": ("keras", "tensorflow", "tf_saved_model"),
    "litert": ("keras", "tensorflow", "litert"),
    "openvino": ("keras", "tensorflow", "openvino"),
}
EXPORT_BACKENDS = tuple(EXPORT_SOURCES)
BACKENDS = TORCH_BACKENDS + KERAS_BACKENDS + EXPORT_BACKENDS
# What `--backends all` means: the eager and compiled framework paths of the throughput comparison. The export
# runtimes are asked for by name, or all at once with `--backends deploy` (they export each model first).
# keras-torch-jit is asked for by name (the GPU table measures it: `benchmarks.gpu`).
DEFAULT_BACKENDS = TORCH_BACKENDS + ("keras-tensorflow", "keras-jax", "keras-torch")
# Value of KERAS_BACKEND for each Keras backend; Keras reads it once, at import.
KERAS_BACKEND_ENV = {"keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch", "keras-torch-jit": "torch"}
# The native reference every `ratio_to_torch` is computed against.
REFERENCE_BACKEND = "torch"

# `latency`: batch 1, one call at a time, the p50 / p90 / p99 of `latency_calls` timed calls after the warm-up.
MODES = ("train", "infer", "latency")
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")

# `--peers`: Keras' own ResNet50 next to our Keras resnet50, on every Keras backend.
PEER_MODEL = "keras.applications.ResNet50"
PEER_OF = "resnet50"

# timm's benchmark columns first, then what makes a row interpretable on its own.
COLUMNS = (
    "model",
    "backend",
    "mode",
    "device",
    "dtype",
    "batch",
    "img_size",
    "samples_per_sec",
    "step_ms_median",
    "step_ms_min",
    "step_ms_max",
    "peak_mem_mb",
    "params_m",
    "ratio_to_torch",
    "status",
    "error",
    "warmup",
    "steps_timed",
    "first_step_ms",
    "compiler",
    "peak_mem_source",
    "channels_last",
    "peer_of",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "artifact_mb",
    "export_error",
)

# `status` is "ok" or one of these reasons; `error` then says what happened in words.
STATUS_OK = "ok"
STATUS_NOT_INSTALLED = "not installed"
STATUS_NO_GPU = "no gpu"
STATUS_UNSUPPORTED_DTYPE = "unsupported dtype"
STATUS_OOM = "out of memory"
STATUS_ERROR = "error"
STATUS_TIMEOUT = "timeout"
STATUS_CRASHED = "worker crashed"
STATUS_NOT_APPLICABLE = "not applicable"
STATUS_NOT_MEASURED = "not measured"  # left out of a smaller sweep on purpose; the row says why

# A run is contended when the 1-minute load average before it is over this many times the CPU count: other processes
# then compete for the cores (multi-threaded rows such as torch eager's suffer most), so its timings and ratios are
# noisy. The one rule behind the harness's warning (`meta["load_warning"]`) and the report's marks (`contention`).
CONTENDED_LOAD_PER_CPU = 0.5


def contended(load_average, cpu_count) -> bool:
    """Whether a run that started at `load_average` (os.getloadavg()'s triple, or None) on `cpu_count` CPUs was
    contended (`CONTENDED_LOAD_PER_CPU`)."""
    return bool(load_average) and load_average[0] > CONTENDED_LOAD_PER_CPU * (cpu_count or 1)


def contention(meta: dict | None) -> str | None:
    """"load 4.27 on 2 CPUs" when the run a benchmark's `meta` describes was contended (`contended`, on the load
    average and CPU count it recorded), else None (an idle run, or a meta that recorded no load average)."""
    meta = meta or {}
    load, cpus = meta.get("load_average_before"), meta.get("cpu_count")
    return f"load {load[0]:.2f} on {cpus or '?'} CPUs" if contended(load, cpus) else None


# Lines a worker writes to stderr with this prefix are progress messages the harness echoes; every
# other line (framework warnings, tracebacks) only goes to the worker's log and its failure tail.
PROGRESS_PREFIX = "[bench]"


def empty_row(config: dict, options: dict) -> dict:
    """A row with every column present: identity columns filled from the config and the run's
    options, measurements None. Workers fill the measurements; the harness fills the status of a
    row no worker delivered."""
    row = {column: None for column in COLUMNS}
    row.update(
        model=config["model"],
        backend=config["backend"],
        mode=config["mode"],
        device=options["device"],
        dtype=options["dtype"],
        batch=config["batch"],
        img_size=config["img_size"],
        warmup=options["warmup"],
        steps_timed=options["repeats"],
        channels_last=options["channels_last"] if config["backend"] in TORCH_BACKENDS else None,
        peer_of=config.get("peer_of"),
    )
    return row


def failed_row(config: dict, options: dict, status: str, error: str) -> dict:
    row = empty_row(config, options)
    row.update(status=status, error=error, steps_timed=0)
    return row
