"""`python -m benchmarks`: the command line of `benchmarks.run`.

Progress goes to stderr while the workers run; at the end the Markdown table and the paths of the
written files go to stdout. Exit status: 0 when at least one row was measured, 1 when none was
(every backend failed; the files still say why), 2 for a request that cannot be run (unknown model,
backend or option value).
"""
from __future__ import annotations

import argparse
import sys

from benchmarks import harness, report, schema


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {value!r}")
    return value == "on"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Throughput of the twins per backend (torch eager, torch.compile, Keras on tensorflow / "
            "jax / torch), one subprocess per backend. Synthetic data on the device, warm-up "
            "excluded, device synchronised every step, median of the timed steps."
        ),
    )
    parser.add_argument("--models", default="resnet50",
                        help="comma-separated registered model names, or 'all' (default: resnet50)")
    parser.add_argument("--backends", default="all",
                        help=f"comma-separated subset of {','.join(schema.BACKENDS)}; 'all' (default) = the first "
                             f"five, 'deploy' = the export runtimes ({','.join(schema.EXPORT_BACKENDS)})")
    parser.add_argument("--mode", default="train,infer",
                        help="comma-separated: train (forward+backward+SGD step), infer (forward, no grad), latency "
                             "(batch 1, p50/p90/p99 of --latency-calls calls) (default: train,infer)")
    parser.add_argument("--latency-calls", type=int, default=None,
                        help="timed calls of a latency row (default: 50 on CPU, 200 on GPU)")
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes to sweep (default: 8 on CPU, 64 on GPU)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="square input size (default: each model's registry input_size)")
    parser.add_argument("--dtype", choices=schema.DTYPES, default="float32",
                        help="bfloat16 = torch autocast / Keras mixed_bfloat16 policy (default: float32)")
    parser.add_argument("--channels-last", action="store_true",
                        help="torch backends: channels_last memory format for module and batch")
    parser.add_argument("--device", choices=schema.DEVICES, default="auto",
                        help="auto = cuda when torch sees a CUDA device or jax sees a GPU (default)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-up steps per row, at least 1: the first step compiles (default: 2 on CPU, 10 on GPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per row; the row reports their median/min/max (default: 5 CPU, 30 GPU)")
    parser.add_argument("--tf32", type=_on_off, default=False, metavar="on|off",
                        help="allow TF32 matmuls/convolutions on GPU in every framework (default: off)")
    parser.add_argument("--peers", action="store_true",
                        help=f"add {schema.PEER_MODEL}(weights=None) rows on each Keras backend next to resnet50")
    parser.add_argument("--timeout", type=float, default=harness.DEFAULT_TIMEOUT_S,
                        help=f"wall-clock limit per worker process, seconds (default: {harness.DEFAULT_TIMEOUT_S:.0f})")
    parser.add_argument("--side-by-side", type=int, default=None, metavar="N",
                        help="workers alive at a time: each prepares (imports, builds, compiles, warms up) beside "
                             "the others and times its steps alone (default: 1, one worker after another)")
    parser.add_argument("--out", default=harness.DEFAULT_OUT_DIR,
                        help="output directory for benchmark.json/.md/.png (default: benchmarks/results/latest)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = harness.run(
            models=args.models,
            backends=args.backends,
            modes=args.mode,
            batch_sizes=args.batch_sizes,
            img_size=args.img_size,
            dtype=args.dtype,
            device=args.device,
            warmup=args.warmup,
            repeats=args.repeats,
            channels_last=args.channels_last,
            peers=args.peers,
            tf32=args.tf32,
            out_dir=args.out,
            timeout_s=args.timeout,
            latency_calls=args.latency_calls,
            side_by_side=args.side_by_side,
        )
    except ValueError as exc:
        print(f"python -m benchmarks: error: {exc}", file=sys.stderr)
        return 2
    print(report.render_markdown(result["rows"], result["meta"]))
    files = result["meta"]["files"]
    print("Files:")
    for kind in ("json", "markdown", "png", "logs"):
        if kind in files:
            print(f"  {kind:8s} {files[kind]}")
    measured = sum(row["status"] == schema.STATUS_OK for row in result["rows"])
    if not measured:
        print("No row could be measured; the status column says why.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
