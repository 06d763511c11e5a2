"""`twins` command line: the report, parity tables and checkpoint conversion.

    twins report [--quick] [--out DIR]
    twins parity resnet50 [--backends tensorflow,jax,torch] [--json out.json]
    twins convert resnet50.pth resnet50.weights.h5 --model resnet50 [--num-classes 10 --exclude fc]
    twins convert resnet50.weights.h5 resnet50.safetensors --model resnet50

Each Keras backend runs in its own subprocess (a backend is fixed when keras is first imported).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twins import checkpoints, registry
from twins.parity import BACKENDS, CHECKS


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def _parse_backends(text: str) -> list[str]:
    wanted = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; expected a subset of {','.join(BACKENDS)}")
    return wanted


def _parse_models(text: str) -> list[str]:
    if text == "all":
        return registry.names()
    names = [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        try:
            registry.get(name)
        except registry.UnknownModelError as exc:
            raise SystemExit(str(exc)) from None
    return names


def run_parity(models, backends, *, batch=2, size=None, timeout=1800, log=sys.stderr) -> list[dict]:
    """Run the parity worker for `models` once per backend; a backend that cannot run yields rows
    with `passed: False` and the reason, rather than vanishing."""
    rows = []
    available = installed_backends()
    for backend in backends:
        if backend not in available:
            rows += [_failed_row(m, backend, f"{backend} is not installed") for m in models]
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "twins.parity", "--backend", backend, "--batch", str(batch),
                   "--json-out", str(out)]
            for m in models:
                cmd += ["--model", m]
            if size:
                cmd += ["--size", str(size)]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            print(f"[parity] {backend}: {', '.join(models)} ...", file=log, flush=True)
            start = time.time()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
                reason = None if proc.returncode == 0 else (
                    f"worker exited {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
            except subprocess.TimeoutExpired:
                reason = f"worker timed out after {timeout} s"
            if reason is None:
                rows += json.loads(out.read_text())
                print(f"[parity] {backend}: done in {time.time() - start:.0f} s", file=log, flush=True)
            else:
                print(f"[parity] {backend}: FAILED: {reason}", file=log, flush=True)
                rows += [_failed_row(m, backend, reason) for m in models]
    return rows


def _failed_row(model, backend, reason):
    return {"model": model, "backend": backend, "check": "run", "error": None, "bound": 0.0,
            "passed": False, "detail": reason, "meta": {}}


def _fmt(error) -> str:
    return "n/a" if error is None else f"{error:.1e}"


def parity_table(rows: list[dict], backends: list[str]) -> str:
    """Markdown table per model: one line per check, one column per backend."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        meta = next((r["meta"] for r in mine if r["meta"]), {})
        lines.append(f"### {model}  (batch {meta.get('batch', '?')}, {meta.get('size', '?')}x{meta.get('size', '?')}, "
                     f"eval float32, train checks {meta.get('train_dtype', '?')}, Keras on {meta.get('device', '?')}, torch reference on cpu)")
        lines.append("")
        lines.append("| check | " + " | ".join(backends) + " | bound |")
        lines.append("|---|" + "---|" * len(backends) + "---|")
        checks = [c for c in CHECKS if any(r["check"] == c for r in mine)] + \
                 [c for c in dict.fromkeys(r["check"] for r in mine) if c not in CHECKS]
        for check in checks:
            cells, bound = [], None
            for backend in backends:
                row = next((r for r in mine if r["check"] == check and r["backend"] == backend), None)
                if row is None:
                    cells.append("-")
                    continue
                bound = row["bound"]
                cells.append(f"{_fmt(row['error'])} {'ok' if row['passed'] else 'FAIL'}"
                             + ("" if row["passed"] or not row["detail"] else f" ({row['detail']})"))
            lines.append(f"| {check} | " + " | ".join(cells) + f" | {'' if bound is None else f'{bound:.0e}'} |")
        lines.append("")
    return "\n".join(lines)


def cmd_parity(args) -> int:
    models = _parse_models(args.models)
    backends = _parse_backends(args.backends) if args.backends else installed_backends()
    rows = run_parity(models, backends, batch=args.batch, size=args.size, timeout=args.timeout)
    print(parity_table(rows, backends))
    if args.json:
        public = [{k: r[k] for k in ("model", "backend", "check", "error", "bound", "passed", "detail")} for r in rows]
        checkpoints.write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(public, indent=1)))
        print(f"wrote {args.json}")
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# convert

KERAS_SUFFIXES = (".weights.h5", ".keras")


def _is_keras_file(path: str) -> bool:
    return path.endswith(KERAS_SUFFIXES)


def _check_formats(src: str, dst: str) -> None:
    ok = KERAS_SUFFIXES + checkpoints.SUFFIXES
    for role, path in (("source", src), ("destination", dst)):
        if not path.endswith(ok):
            raise SystemExit(f"{role} {path!r}: unsupported format; expected one of {', '.join(ok)}")


def cmd_convert(args) -> int:
    _check_formats(args.src, args.dst)
    info = registry.get(args.model)
    exclude = tuple(args.exclude or ())
    if args.num_classes and args.num_classes != info.num_classes and not exclude:
        exclude = info.classifier  # a new class count means a fresh head
    os.environ.setdefault("KERAS_BACKEND", args.backend or "torch")
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    import keras

    import keras_impl
    from keras_impl.weights import load_torch_state_dict, torch_state_dict

    if _is_keras_file(args.src):
        if exclude:
            raise SystemExit("--exclude applies to torch-layout sources; convert to .safetensors first")
        if args.src.endswith(".keras"):
            model = keras.saving.load_model(args.src, compile=False)
        else:
            model = keras_impl.build(args.model, num_classes=args.num_classes or info.num_classes)
            if not Path(args.src).is_file():
                raise SystemExit(f"checkpoint not found: {args.src}")
            model.load_weights(args.src)
        state = torch_state_dict(model)
        report_text = f"read {len(state)} tensors from {args.src}"
    else:
        state = checkpoints.read(args.src)
        num_classes = args.num_classes or _classes_in(state, info)
        model = keras_impl.build(args.model, num_classes=num_classes)
        report = load_torch_state_dict(model, state, exclude=exclude, strict=True)
        report_text = f"{args.src}: {report.summary()}"
        if report.skipped:
            report_text += f" (fresh: {', '.join(report.skipped)})"
        state = torch_state_dict(model)
    print(report_text)
    if _is_keras_file(args.dst):
        suffix = ".weights.h5" if args.dst.endswith(".weights.h5") else ".keras"
        save = model.save_weights if suffix == ".weights.h5" else model.save

        def writer(tmp: Path):
            # Keras insists on the suffix, so the temp file keeps it; the rename is still atomic.
            named = tmp.with_name(tmp.name + suffix)
            try:
                save(str(named))
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)

        checkpoints.write_atomic(args.dst, writer)
    else:
        checkpoints.write(args.dst, state)
    print(f"wrote {args.dst} ({args.model}, {keras.backend.backend()} backend)")
    return 0


def _classes_in(state, info) -> int:
    head = next((k for k in state if k.startswith(info.classifier[-1] + ".") and k.endswith("weight")), None)
    return int(state[head].shape[0]) if head is not None else info.num_classes


def cmd_report(args) -> int:
    from twins.report import build_report

    parity_backends = _parse_backends(args.parity_backends) if args.parity_backends else None
    result = build_report(args.out, quick=args.quick, parity_backends=parity_backends, bench_backends=args.bench_backends)
    print(result["text"])
    print(f"report: {result['markdown']}\n        {result['html']}")
    return 1 if result["parity_failed"] else 0


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="twins", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("parity", help="compare the Keras and torch twins on every Keras backend")
    p.add_argument("models", help="comma-separated model names, or 'all'")
    p.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)} (default: installed ones)")
    p.add_argument("--json", help="write rows {model, backend, check, error, bound, passed} here")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="square image size (default: the model's parity size)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per backend")
    p.set_defaults(func=cmd_parity)

    c = sub.add_parser("convert", help="move a checkpoint between torch layout and Keras files")
    c.add_argument("src", help="source: .pth/.pt/.safetensors/.npz (torch layout) or .weights.h5/.keras")
    c.add_argument("dst", help="destination: .weights.h5/.keras, or .safetensors/.pth/.npz (torch layout)")
    c.add_argument("--model", required=True, help=f"architecture ({', '.join(registry.names())})")
    c.add_argument("--num-classes", type=int, default=None, help="class count of the destination model")
    c.add_argument("--exclude", action="append", help="torch key prefix to leave freshly initialised (repeatable)")
    c.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: $KERAS_BACKEND or torch)")
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("report", help="parity for every model and backend plus a benchmark sweep, as one report")
    r.add_argument("--quick", action="store_true", help="small benchmark sweep (what `make demo` runs)")
    r.add_argument("--out", default="reports/latest", help="output folder (default reports/latest)")
    r.add_argument("--parity-backends", help=f"subset of {','.join(BACKENDS)} (default: installed ones)")
    r.add_argument("--bench-backends", default="all", help="benchmark backends (default all five)")
    r.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (checkpoints.CheckpointError, registry.UnknownModelError, FileNotFoundError) as exc:
        print(f"twins {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
