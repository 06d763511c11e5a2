"""Deployment artifacts, framework-free: which formats each twin exports to, the file(s) an artifact is,
writing one atomically, and running one in the runtime it ships in.

Formats (`--format`): the torch twin exports `pt2` (a `torch.export` program) and `onnx` (the dynamo
exporter); the Keras twin exports what Keras 3's `model.export(format=...)` offers: `tf_saved_model`,
`onnx`, `litert`, `torch` (a `.pt2` program, torch backend only) and `openvino`. Each artifact runs in one
runtime, imported only when an artifact is opened (a `.pt2` is torch's format as a `.pth` is, a SavedModel
tensorflow's):

| artifact | runtime |
|---|---|
| `.pt2` (torch twin `pt2`, Keras `torch`) | `torch.export.load(path).module()` |
| `.onnx` | onnxruntime, CPU execution provider |
| SavedModel folder | `tf.saved_model.load(path).serve` |
| `.tflite` | the LiteRT interpreter (`ai_edge_litert`) |
| `.xml` + `.bin` | OpenVINO, CPU device |
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from twins.checkpoints import fsync
from twins.metrics import rel_err

FORMATS = {
    "torch": {"pt2": ".pt2", "onnx": ".onnx"},
    "keras": {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "torch": ".pt2", "openvino": ".xml"},
}
# What runs an artifact: the Keras format `torch` is a `.pt2` program like the torch twin's `pt2`.
RUNTIME_OF = {"pt2": "pt2", "onnx": "onnx", "tf_saved_model": "tf_saved_model", "litert": "litert", "torch": "pt2",
              "openvino": "openvino"}
RUNTIME_NAMES = {"pt2": "torch.export", "onnx": "onnxruntime", "tf_saved_model": "tf.saved_model",
                 "litert": "LiteRT interpreter", "openvino": "OpenVINO"}
# The Keras backend `twins export --framework keras` uses for a format when none is given: tensorflow exports
# every format but `torch`, which only the torch backend exports.
DEFAULT_KERAS_BACKEND = {"tf_saved_model": "tensorflow", "onnx": "tensorflow", "litert": "tensorflow",
                         "openvino": "tensorflow", "torch": "torch"}
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
_NEEDS_TORCH = "Keras exports format='torch' (.pt2) from the torch backend only"
# The (Keras backend, format) pairs that do not export with Keras 3.15.1 and the [export] extra, and what
# stops each; measured with resnet18 (parity_tests/test_export.py keeps this table honest: each pair must
# still fail, and every other pair must work).
KERAS_LIMITS = {
    ("jax", "onnx"): "Keras exports ONNX from jax through jax2onnx, which the [export] extra leaves out: it pulls "
                     "flax, optax and orbax, and with it installed (0.17.1) the exported resnet18 fails in "
                     "onnxruntime (MaxPool: 'Unsupported pooling size')",
    ("jax", "litert"): "Keras 3.15 exports LiteRT from the tensorflow and torch backends only",
    ("jax", "torch"): _NEEDS_TORCH,
    ("jax", "openvino"): "OpenVINO cannot convert the XlaCallModule op that Keras' jax export is made of",
    ("tensorflow", "torch"): _NEEDS_TORCH,
    ("torch", "tf_saved_model"): "Keras exports a SavedModel from the torch backend through torch_xla "
                                 "(torch.export -> StableHLO -> TF), which is not installed (no build for this torch)",
    ("torch", "litert"): "Keras exports LiteRT from the torch backend through litert-torch, which the [export] "
                         "extra leaves out: it pulls transformers, torchao and kagglehub and pins "
                         "typing-extensions below 4.13 (through xdsl), a downgrade of what the rest installs",
}

# Single models whose artifact one runtime refuses although the pair exports others, found by `make parity`: the
# row keeps the reason. None now: pspnet's and vgg11_bn's `.tflite` were refused by the LiteRT interpreter until
# their adaptive pooling and align-corners resize stopped being einsums (`keras_impl.common.apply_separable`).
MODEL_LIMITS: dict[tuple[str, str, str], str] = {}


class ExportError(ValueError):
    """A request `twins export` cannot carry out: an unknown format, a wrong file name."""


def check_format(framework: str, fmt: str) -> str:
    """The file suffix of `fmt` for `framework`, or an ExportError listing the formats it has."""
    if framework not in FORMATS:
        raise ExportError(f"unknown framework {framework!r}; expected one of {', '.join(FORMATS)}")
    formats = FORMATS[framework]
    if fmt not in formats:
        raise ExportError(f"the {framework} twin has no export format {fmt!r}; expected one of {', '.join(formats)}")
    return formats[fmt]


def check_path(framework: str, fmt: str, path: str | os.PathLike) -> Path:
    suffix = check_format(framework, fmt)
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise ExportError(f"--format {fmt} writes a {suffix} file; got --out {path} (expected a name ending {suffix})")
    if not suffix and path.suffix:
        raise ExportError(f"--format {fmt} writes a folder; got --out {path}, which looks like a file "
                          f"(give a folder name without a suffix)")
    if not path.parent.is_dir():
        raise ExportError(f"--out {path}: the folder {path.parent} does not exist")
    return path


def limit(backend: str, fmt: str, model: str | None = None) -> str | None:
    """Why Keras on `backend` cannot export `fmt` (of `model`) here, or None."""
    return KERAS_LIMITS.get((backend, fmt)) or MODEL_LIMITS.get((model, backend, fmt))


def artifact_stem(model: str, size: int, framework: str, fmt: str, backend: str | None = None) -> str:
    """An artifact's file name without its format's suffix (`FORMATS`), the same for every writer: the parity run
    leaves its checked artifacts under it (`twins_cli.parity.run_parity(keep_exports=)`) and the benchmark
    looks for them there before it exports its own (`benchmarks.worker.export_artifact`)."""
    return f"{model}-{size}-{framework}{f'-{backend}' if backend else ''}-{fmt}"


def artifact_files(path: str | os.PathLike) -> list[Path]:
    """Every file an artifact is: the file itself, an OpenVINO model's `.bin`, a SavedModel folder's files."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    files = [path]
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    return files


def artifact_bytes(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in artifact_files(path))


def write_artifact(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Run `writer(tmp_path)` in a temporary folder beside `path` (under `path`'s own name, so files that
    name each other, an OpenVINO `.xml` and its `.bin`, still do) and move what it wrote into place, the
    companions first and `path` last; on any error nothing is left. A reader that opens `path` never sees a
    half-written artifact; a folder artifact (SavedModel) replaces an older one whole."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        writer(staging / path.name)
        if not (staging / path.name).exists():
            raise ExportError(f"the exporter wrote no {path.name} (it wrote: "
                              f"{', '.join(sorted(p.name for p in staging.iterdir())) or 'nothing'})")
        for item in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            target = path.parent / item.name
            if item.is_dir():
                old = None
                if target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{item.name}.old.", suffix=".tmp", dir=path.parent))
                    os.replace(target, old / item.name)
                os.replace(item, target)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                fsync(item)
                os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync(path.parent, directory=True)
    return path


def remove_artifact(path: str | os.PathLike) -> None:
    """Delete an artifact: a SavedModel folder, or the file with its companions (`artifact_files`)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        for f in artifact_files(path):
            f.unlink(missing_ok=True)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, for a row or an error that quotes what an exporter or runtime raised."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


# ----------------------------------------------------------------------------------------------
# Runtimes


@dataclass
class Runtime:
    """An opened artifact: `run(x)` takes one float32 batch in the layout its twin takes (torch NCHW, Keras
    NHWC) and returns the outputs as numpy arrays, in the twin's output order."""

    name: str
    version: str
    run: Callable[[np.ndarray], list]
    load_s: float


def _outputs(value) -> list:
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=_output_index)]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _outputs(item)]
    return [value]


def _output_index(name: str):
    """`output_0`, `output_1`, ... in numeric order (Keras' SavedModel and LiteRT signatures name outputs so)."""
    digits = "".join(ch for ch in str(name).rsplit("_", 1)[-1] if ch.isdigit())
    return (int(digits) if digits else 0, str(name))


def open_runtime(fmt: str, path: str | os.PathLike, *, threads: int | None = None) -> Runtime:
    """Open the artifact `path` of export format `fmt` (either twin's) in its runtime. `threads` caps the
    runtime's intra-op threads where it has such a knob (onnxruntime, LiteRT, OpenVINO)."""
    kind = RUNTIME_OF.get(fmt)
    if kind is None:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(RUNTIME_OF)}")
    path = str(path)
    start = time.perf_counter()
    run, version = globals()[f"_open_{kind}"](path, threads)
    return Runtime(RUNTIME_NAMES[kind], version, run, time.perf_counter() - start)


def _open_pt2(path, threads):
    import warnings

    import torch

    with warnings.catch_warnings():  # torch 2.13's loader trips its own pytree deprecation (LeafSpec)
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.export.load(path).module()

    def run(x):
        with torch.no_grad():
            return [t.numpy() for t in _outputs(module(torch.from_numpy(np.ascontiguousarray(x))))]

    return run, f"torch {torch.__version__}"


def _open_onnx(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})), f"onnxruntime {ort.__version__}"


def _open_tf_saved_model(path, threads):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # held by `run`: its `serve` references the loaded object's variables

    def run(x):
        return [t.numpy() for t in _outputs(loaded.serve(tf.constant(x)))]

    return run, f"tensorflow {tf.__version__}"


def _open_litert(path, threads):
    import importlib.metadata

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner()
    (input_name,) = next(iter(interpreter.get_signature_list().values()))["inputs"]

    def run(x):
        return _outputs(runner(**{input_name: x}))

    return run, f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"


def _open_openvino(path, threads):
    import openvino as ov

    core = ov.Core()
    # The CPU plugin computes in bfloat16 by default on CPUs with AMX or AVX512-BF16 (this machine's Xeon has both:
    # resnet18's artifact then differs from the eager twin by 5.7e-3); the artifact is float32 and runs as such.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        result = request.infer([x])
        return [np.array(result[port]) for port in compiled.outputs]

    return run, f"openvino {ov.__version__.split('-')[0]}"


# ----------------------------------------------------------------------------------------------
# Export parity


# Batch sizes every artifact is run at: 3 and 1, so a batch dimension baked in at export fails one of them.
CHECK_BATCHES = (3, 1)
BOUND = 1e-5


def compare(runtime: Runtime, eager: Callable[[np.ndarray], list], batches: list[np.ndarray]) -> dict:
    """Run each batch through the artifact and through the eager twin; the worst relative error over
    outputs and batches, per batch. A batch the artifact refuses (a batch size baked in), or outputs of
    another count or shape, is an error that says so, not a number."""
    per_batch = {}
    for x in batches:
        want = eager(x)
        try:
            got = runtime.run(x)
        except Exception as exc:
            raise ExportError(f"{runtime.name} refused a batch of {len(x)}: {first_line(exc, 300)}") from exc
        if len(got) != len(want):
            raise ExportError(f"{runtime.name} returned {len(got)} output(s), the eager twin {len(want)}")
        for g, w in zip(got, want):
            if tuple(np.shape(g)) != tuple(np.shape(w)):
                raise ExportError(f"{runtime.name} returned shape {tuple(np.shape(g))} for a batch of {len(x)}, "
                                  f"the eager twin {tuple(np.shape(w))}")
        per_batch[len(x)] = max(rel_err(g, w) for g, w in zip(got, want))
    return {"error": max(per_batch.values()), "per_batch": per_batch}


def check_batches(size: int, layout: str, seed: int = 0) -> list[np.ndarray]:
    """The batches of `CHECK_BATCHES` images, standard-normal like the parity engine's, NCHW or NHWC."""
    rng = np.random.RandomState(seed)
    shape = {"NCHW": lambda b: (b, 3, size, size), "NHWC": lambda b: (b, size, size, 3)}[layout]
    return [rng.randn(*shape(b)).astype(np.float32) for b in CHECK_BATCHES]
