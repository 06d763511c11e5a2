"""`twins export`: a twin as the artifact a deployment ships, reloaded in that artifact's runtime and
checked against the eager twin on the same batches before the command says it worked.

    twins export resnet50 --framework torch --format onnx --out resnet50.onnx [--weights CKPT] [--img-size 224]
    twins export resnet50 --framework keras --backend tensorflow --format litert --out resnet50.tflite

The formats and runtimes are in `twins.exports`. The check runs the artifact on a batch of 3 and a batch of
1 (a batch size baked in at export fails one of them) and compares every output with the eager twin's:
relative max error within 1e-5 (float32). The parity engine's `export_*` rows (`twins parity`) and the
benchmark's export backends call the same `export_twin` and `verify`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from twins import checkpoints, exports, registry
from twins.exports import ExportError


def output_list(out) -> list:
    """A model's outputs as a list: one tensor, or several (simclr_ssl's `(feature, projection)`)."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


class Unsupported(ExportError):
    """Keras cannot export this format from this backend here (`twins.exports.KERAS_LIMITS` says why), or one
    runtime refuses this model's artifact (`MODEL_LIMITS`)."""


def known_limit(side, fmt: str, exc: Exception, model: str | None = None) -> Unsupported | None:
    """`exc`, raised exporting or checking a Keras artifact, as an `Unsupported` naming the recorded limit of this
    backend and format (and model), with what was raised; None where no limit is recorded (a real failure)."""
    if isinstance(exc, Unsupported):
        return exc
    why = exports.limit(side.backend, fmt, model) if side.framework == "keras" else None
    return None if why is None else Unsupported(f"{why} (Keras on {side.backend} raised {exports.first_line(exc)})")


def side_for(framework: str, fmt: str, backend: str | None):
    """The `twins_cli.train.Side` that exports `fmt`: for Keras, the backend asked for, else the format's default."""
    from twins_cli.train import Side

    exports.check_format(framework, fmt)
    if framework == "keras":
        backend = backend or exports.DEFAULT_KERAS_BACKEND[fmt]
    return Side(framework, backend)


def build_twin(side, name: str, size: int, *, state=None, seed: int = 0, **options):
    """The twin to export: built for `size` (the Keras twin with a fixed input shape, which adaptive pooling
    needs while Keras traces), the checkpoint `state` loaded strictly (with its class count) or the seed's
    weights, in eval mode."""
    from twins_cli.convert import classes_in

    info = registry.get(name)
    if state is not None:
        options.setdefault("num_classes", classes_in(state, info))
    if side.framework == "keras":
        options["input_shape"] = (size, size, 3)
    model = side.build(name, seed=seed, **options)
    if state is not None:
        side.load(model, state, strict=True)
    if side.framework == "torch":
        model.eval()
    return model


@contextlib.contextmanager
def _stdout_to_stderr():
    """Exporters print their progress (torch.onnx, tf2onnx); it goes to stderr, so stdout holds our lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_twin(side, model, fmt: str, path: str | os.PathLike, size: int) -> dict:
    """Write `model` as `fmt` to `path` atomically. Returns `{path, bytes, export_s}`; raises `Unsupported`
    when Keras cannot export `fmt` from its backend here (the exporter's own error is kept in the message)."""
    path = exports.check_path(side.framework, fmt, path)
    if side.framework == "torch":
        from torch_impl import export as twin_export

        def writer(tmp):
            twin_export.export(model, str(tmp), fmt, size)
    else:
        from keras_impl import export as twin_export

        options = {}
        if fmt == "torch" and side.backend == "torch":
            from torch_impl.export import dynamic_batch  # torch.export's Dim objects: only torch makes them

            options["dynamic_shapes"] = dynamic_batch()

        def writer(tmp):
            twin_export.export(model, str(tmp), fmt, size, **options)

    start = time.perf_counter()
    try:
        with _stdout_to_stderr():
            exports.write_artifact(path, writer)
    except Exception as exc:
        limited = known_limit(side, fmt, exc)
        if limited is None:
            raise
        raise limited from exc
    return {"path": str(path), "bytes": exports.artifact_bytes(path), "export_s": time.perf_counter() - start}


def eager_outputs(side, model):
    """The eager twin as `x -> [numpy outputs]`, eval mode, in the twin's own layout."""
    if side.framework == "torch":
        import torch

        def run(x):
            with torch.no_grad():
                return [t.numpy() for t in output_list(model(torch.from_numpy(x)))]
    else:
        import keras

        def run(x):
            return [keras.ops.convert_to_numpy(t) for t in output_list(model(x, training=False))]
    return run


def verify(side, model, fmt: str, path, size: int, seed: int = 0) -> dict:
    """Open the artifact in its runtime and compare it with the eager twin on batches of 3 and 1."""
    try:
        runtime = exports.open_runtime(fmt, path)
    except Exception as exc:
        raise ExportError(f"{exports.RUNTIME_NAMES[exports.RUNTIME_OF[fmt]]} could not open the artifact: "
                          f"{exports.first_line(exc)}") from exc
    layout = "NCHW" if side.framework == "torch" else "NHWC"
    result = exports.compare(runtime, eager_outputs(side, model), exports.check_batches(size, layout, seed))
    return {**result, "runtime": runtime.version, "load_s": runtime.load_s, "bound": exports.BOUND,
            "passed": bool(result["error"] <= exports.BOUND)}


def export_report(name: str, side, fmt: str, size: int, weights, written: dict, result: dict | None = None) -> dict:
    """What `twins export --json` writes (and the parity run beside each artifact it keeps): the model, the twin,
    the format, the size, the weights, what `export_twin` returned and the check against the eager twin."""
    report = {"model": name, "framework": side.framework, "backend": side.backend, "format": fmt, "img_size": size,
              "weights": weights, **written}
    if result is not None:
        report["check"] = {**result, "per_batch": {str(b): e for b, e in result.get("per_batch", {}).items()}}
    return report


def describe(result: dict) -> str:
    per = ", ".join(f"batch {b} {e:.1e}" for b, e in result["per_batch"].items())
    return f"{result['runtime']}: {per}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_export(args) -> int:
    from twins_cli.train import check_size

    info = registry.get(args.model)
    size = args.img_size or info.input_size
    try:
        check_size(info, size)
    except SystemExit as exc:
        raise ExportError(str(exc)) from None
    out = exports.check_path(args.framework, args.format, args.out)
    if args.framework == "torch" and args.backend:
        raise ExportError("--backend is a Keras backend; the torch twin has none")
    state = checkpoints.strip_data_parallel(checkpoints.read(args.weights)) if args.weights else None
    side = side_for(args.framework, args.format, args.backend)
    model = build_twin(side, args.model, size, state=state, seed=args.seed)
    weights = args.weights or f"random weights (seed {args.seed}; --weights CKPT for trained ones)"
    print(f"{args.model} ({side.label} twin), {size}x{size}, {weights}")
    print(f"exporting to {args.format} ...", flush=True)
    try:
        written = export_twin(side, model, args.format, out, size)
    except Unsupported as exc:
        print(f"twins export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({_mb(written['bytes'])}) in {written['export_s']:.1f} s")
    report = export_report(args.model, side, args.format, size, args.weights, written)
    status = 0
    if not args.no_check:
        try:
            result = verify(side, model, args.format, out, size, seed=args.seed)
        except ExportError as exc:  # the runtime could not open the artifact, refused a batch, returned other outputs
            result = {"error": None, "passed": False, "why": str(known_limit(side, args.format, exc, args.model) or exc)}
            print(f"export parity against the eager {side.label} twin: FAILED: {result['why']}")
        else:
            print(f"export parity against the eager {side.label} twin: {describe(result)} (bound {exports.BOUND:.0e}): "
                  f"{'ok' if result['passed'] else 'FAILED'}")
        report = export_report(args.model, side, args.format, size, args.weights, written, result)
        if not result["passed"]:
            print(f"twins export: error: {out} does not compute what the eager twin does; removing it", file=sys.stderr)
            exports.remove_artifact(out)
            status = 1
    if args.json:
        checkpoints.write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    return status


def add_parser(sub) -> None:
    formats = "; ".join(f"{fw}: {', '.join(f)}" for fw, f in exports.FORMATS.items())
    e = sub.add_parser("export", help="a twin as a deployment artifact (torch.export, ONNX, SavedModel, LiteRT, "
                                      "OpenVINO), checked against the eager twin")
    e.add_argument("model", help=f"architecture ({', '.join(registry.names())})")
    e.add_argument("--framework", choices=tuple(exports.FORMATS), required=True)
    e.add_argument("--backend", choices=exports.KERAS_BACKENDS,
                   help="Keras backend (default: tensorflow; torch for --format torch)")
    e.add_argument("--format", required=True, help=f"export format ({formats})")
    e.add_argument("--out", required=True, help="artifact path: .pt2, .onnx, .tflite, .xml (+ .bin), or a folder "
                                                 "for tf_saved_model")
    e.add_argument("--weights", help="torch-layout checkpoint (.pth/.pt/.safetensors/.npz) to export, loaded strictly "
                                     "(default: random weights from --seed)")
    e.add_argument("--img-size", type=int, default=None, help="square input size (default: the model's)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--no-check", action="store_true", help="skip reloading the artifact and comparing it")
    e.add_argument("--json", help="write what was exported and the check's figures here")
    e.set_defaults(func=cmd_export)
