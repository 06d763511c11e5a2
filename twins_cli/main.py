"""`twins` command line: the report, parity tables, checkpoint conversion and the training recipe.

    twins report [--quick] [--out DIR]
    twins parity resnet50 [--backends tensorflow,jax,torch] [--json out.json]
    twins convert resnet50.pth resnet50.weights.h5 --model resnet50 [--num-classes 10 --exclude fc]
    twins convert resnet50.weights.h5 resnet50.safetensors --model resnet50
    twins shapes DATA; twins train resnet18 --framework keras --backend jax --data DATA --out RUN
    twins evaluate / predict / plot-history (see twins_cli/train.py)
    twins export resnet50 --framework torch --format onnx --out resnet50.onnx (see twins_cli/export.py)
    twins dp-parity resnet18 --framework torch --sync-bn (see twins_cli/dp_parity.py)
    twins explain resnet50 [--out reports/explain]: the twins side by side (see twins_cli/explain.py)

Each Keras backend runs in its own subprocess (a backend is fixed when keras is first imported).
"""
from __future__ import annotations

import argparse
import json
import sys

from twins import checkpoints, exports, registry
from twins.data import DataError
from twins_cli import parity
from twins_cli.convert import cmd_convert
from twins_cli.dp_parity import add_parser as add_dp_parity_parser
from twins_cli.explain import add_parser as add_explain_parser
from twins_cli.export import add_parser as add_export_parser
from twins_cli.parity import ALL_CHECKS, BACKENDS, TORCH_TWIN
from twins_cli.report import build_report, parity_table
from twins_cli.train import add_parsers as add_training_parsers


def _parse_backends(text: str) -> list[str]:
    wanted = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS + (TORCH_TWIN,)]
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; expected a subset of {','.join(BACKENDS)} "
                         f"(and {TORCH_TWIN}, the torch twin's export rows)")
    return wanted


def _parse_models(text: str) -> list[str]:
    if text == "all":
        return parity.names()
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        try:
            parity.resolve(name)
        except registry.UnknownModelError as exc:
            raise SystemExit(str(exc)) from None
    return names


def _parse_checks(text: str | None) -> list[str] | None:
    if not text:
        return None
    wanted = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in ALL_CHECKS]
    if unknown:
        raise SystemExit(f"unknown check(s) {', '.join(unknown)}; expected a subset of {','.join(ALL_CHECKS)}")
    return wanted


def cmd_parity(args) -> int:
    models = _parse_models(args.models)
    checks = _parse_checks(args.checks)
    backends = _parse_backends(args.backends) if args.backends else parity.default_backends(checks)
    rows = parity.run_parity(models, backends, batch=args.batch, size=args.size, checks=checks, timeout=args.timeout)
    print(parity_table(rows, backends))
    if args.json:
        public = [{k: r.get(k, True) for k in ("model", "backend", "check", "error", "bound", "passed", "supported",
                                                 "detail")} for r in rows]
        checkpoints.write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(public, indent=1)))
        print(f"wrote {args.json}")
    unsupported = [r for r in rows if not r.get("supported", True)]
    failed = [r for r in rows if not r["passed"] and r.get("supported", True)]
    print(f"{len(rows) - len(failed) - len(unsupported)} passed, {len(failed)} failed"
          + (f", {len(unsupported)} exports not supported here (their rows say why)" if unsupported else ""))
    return 1 if failed else 0


def cmd_report(args) -> int:
    parity_backends = _parse_backends(args.parity_backends) if args.parity_backends else None
    result = build_report(args.out, quick=args.quick, parity_backends=parity_backends, bench_backends=args.bench_backends)
    print(result["text"])
    print(f"report: {result['markdown']}\n        {result['html']}")
    return 1 if result["parity_failed"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="twins", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parity", help="compare the Keras and torch twins on every Keras backend")
    p.add_argument("models", help="comma-separated model names or variants (e.g. resnet50-deep-dilated), or 'all'")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)} (default: installed ones)")
    p.add_argument("--checks", help=f"comma-separated subset of {','.join(ALL_CHECKS)} (default: all that apply; "
                                    f"the export_* ones also on {TORCH_TWIN}, the torch twin)")
    p.add_argument("--json", help="write rows {model, backend, check, error, bound, passed} here")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help="image height (default: the model's parity size); the width is the valid size nearest 7/8 "
                        "of it, at least 3/4 (registry.ModelInfo.parity_width), so no row is square")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds per backend's worker (default: 15 minutes per model in the plan)")
    p.set_defaults(func=cmd_parity)

    c = sub.add_parser("convert", help="move a checkpoint between torch layout and Keras files")
    c.add_argument("src", help="source: .pth/.pt/.safetensors/.npz (torch layout), .weights.h5/.keras, or a "
                                "TF-slim TensorFlow checkpoint (vgg19_slim: vgg_19.ckpt)")
    c.add_argument("dst", help="destination: .weights.h5/.keras, or .safetensors/.pth/.npz (torch layout)")
    c.add_argument("--model", required=True, help=f"architecture ({', '.join(registry.names())})")
    c.add_argument("--num-classes", type=int, default=None,
                   help="class count of the destination model (default: the checkpoint's)")
    c.add_argument("--exclude", action="append", help="torch key prefix to leave freshly initialised (repeatable)")
    c.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: $KERAS_BACKEND or torch)")
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("report", help="parity for every model and backend plus a benchmark sweep, as one report")
    r.add_argument("--quick", action="store_true", help="small benchmark sweep (what `make demo` runs)")
    r.add_argument("--out", default="reports/latest", help="output folder (default reports/latest)")
    r.add_argument("--parity-backends", help=f"subset of {','.join(BACKENDS)} (default: installed ones)")
    r.add_argument("--bench-backends", default="all,deploy",
                   help="benchmark backends (default: all five framework backends and the export runtimes)")
    r.set_defaults(func=cmd_report)

    add_training_parsers(sub)
    add_export_parser(sub)
    add_dp_parity_parser(sub)
    add_explain_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "train" and not args.resume and not (args.model and args.data):
        parser.error("twins train needs MODEL and --data (or --resume --out RUN)")
    try:
        return args.func(args)
    except (checkpoints.CheckpointError, registry.UnknownModelError, DataError, exports.ExportError, FileNotFoundError,
            FileExistsError) as exc:
        print(f"twins {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
