"""Export rows: a twin written as a deployment artifact (`twins export`), reopened in the artifact's runtime and
compared with the eager twin on a batch of 3 and a batch of 1 (`twins_cli.export.verify`). Keras' exports run
on the worker's Keras backend; the torch twin's (`pt2`, `onnx`) in a worker of their own, backend `torch_impl`,
which imports no Keras. A format Keras cannot export from a backend here keeps its row, `supported: false`,
with the reason (`twins.exports.KERAS_LIMITS`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .bounds import TORCH_EXPORT_CHECKS, TORCH_TWIN, bound_for
from .rows import Row, check_row
from .sides import reference_twin
from .variants import resolve


def export_format(check: str, framework: str) -> str:
    """The `twins export --format` of an export check: `export_pt2` is the torch twin's `pt2`, Keras' `torch`."""
    fmt = check[len("export_"):]
    return "torch" if framework == "keras" and fmt == "pt2" else fmt


# Where the workers leave every export artifact that passed its check, with what `twins export --json` writes beside
# it (`twins_cli.export.export_report`), under `twins.exports.artifact_stem`: `run_parity(keep_exports=FOLDER)`
# sets it for its workers. `make demo`'s benchmark measures the export runtimes on these artifacts instead of
# exporting resnet18 at 64x64 six times more (`benchmarks.prepare_exports`). Unset: each artifact is deleted.
KEEP_EXPORTS_ENV = "TWINS_PARITY_KEEP_EXPORTS"


def export_row(side, model, name: str, fmt: str, size: int, seed: int) -> tuple[float, str]:
    """Export `model` (of registered model `name`), reopen it in its runtime, compare: `(error, detail)` as every
    check returns; a failure the export limits record (`twins.exports`) is raised as `Unsupported`. With
    `KEEP_EXPORTS_ENV` set, an artifact within the bound stays in that folder with its report."""
    import json

    from twins import checkpoints, exports
    from twins_cli import export

    keep = os.environ.get(KEEP_EXPORTS_ENV)
    with tempfile.TemporaryDirectory(prefix="twins-export-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        stem = exports.artifact_stem(name, size, side.framework, fmt, side.backend)
        path = folder / f"{stem}{exports.FORMATS[side.framework][fmt]}"
        try:
            written = export.export_twin(side, model, fmt, path, size)
            result = export.verify(side, model, fmt, path, size, seed=seed)
        except Exception as exc:
            if keep and path.exists():
                exports.remove_artifact(path)
            limited = export.known_limit(side, fmt, exc, name)
            if limited is None:
                raise
            raise limited from exc
        if keep and result["passed"]:
            report = export.export_report(name, side, fmt, size, f"the parity run's reference weights (seed {seed})",
                                          written, result)
            checkpoints.write_atomic(folder / f"{stem}.json", lambda t: t.write_text(json.dumps(report, indent=1)))
        elif keep:
            exports.remove_artifact(path)
    return result["error"], f"{export.describe(result)}; {written['bytes'] / 1e6:.1f} MB, exported in {written['export_s']:.1f} s"


def run_torch_exports(name: str, *, size: int | None = None, seed: int = 0, checks=TORCH_EXPORT_CHECKS) -> list[Row]:
    """The torch twin's export rows (backend `torch_impl`): the reference weights of `ParityRun`, no Keras."""
    wanted = [check for check in TORCH_EXPORT_CHECKS if check in checks]
    if not wanted:  # a job of the plan with no export of the torch twin: nothing to build
        return []
    import torch

    from twins_cli.train import Side

    model, options, default_size = resolve(name)
    size = size or default_size
    reference = reference_twin(model, options, seed)
    meta = {"batch": "3 and 1", "size": size, "dtype": "float32", "device": "cpu", "torch": torch.__version__,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    return [check_row(name, TORCH_TWIN, check, bound_for(name, check),
                      lambda check=check: export_row(Side("torch"), reference, model, export_format(check, "torch"),
                                                     size, seed), meta)
            for check in wanted]
