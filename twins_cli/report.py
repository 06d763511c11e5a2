"""`twins report`: the main job. Parity for every registered model on every installed Keras backend
(with `--quick`, each model's `QUICK_SUITE` checks, what `make test` runs),
a throughput sweep over all five benchmark backends, and one report in Markdown and in a
self-contained HTML page (chart embedded) that a team reads to choose a framework per deployment.

    twins report [--quick] [--out DIR]

Files in DIR (default `reports/latest`): report.md, report.html, parity.json, explain/ (`twins explain all`: a
page per model, linked from the report), and the benchmark's benchmark.json / benchmark.md / benchmark.png.
Every file is written atomically.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twins import checkpoints
from twins_cli import parity
from twins_cli.parity import CHECKS, TORCH_TWIN
from twins_cli.parity.table import parity_table

# --quick: what `make demo` runs: resnet18 at 64 px on the five framework backends and the six export runtimes
# (train and infer at the server batch of the deployment table, batch-1 latency), but torch-compile's training
# step and its batch-1 program, whose compilations alone take ~45 s and ~10 s on 2 CPU cores (torch-compile
# still has its compiled inference at batch 32; `make bench` measures the rest).
QUICK_BENCH = {"models": ["resnet18"], "batch_sizes": [32], "img_size": 64, "warmup": 1, "repeats": 3,
               "latency_calls": 20,
               # Two workers alive at a time on a CPU, each timing alone (`benchmarks.gate`): the next one imports,
               # builds and compiles while the other does (README "Benchmarks": what it saved and cost, measured).
               "side_by_side": 2,
               "skip": {("torch-compile", "train"): "left out of the quick sweep: compiling the training step takes "
                                                     "~45 s on 2 CPU cores; `make bench` measures it",
                        ("torch-compile", "latency"): "left out of the quick sweep: compiling the batch-1 program "
                                                       "takes ~10 s on 2 CPU cores; `make bench` measures it"}}
FULL_BENCH = {"models": "all", "batch_sizes": [8, 32], "img_size": None, "warmup": None, "repeats": None,
              "latency_calls": None, "skip": None}
# Parity worker processes running at once (each backend's, then helpers for the backends still running:
# `parity.launch.run_shared`): each keeps about one core busy, and they share the heavy lock
# (`twins_cli.parity.memory.HeavyLock`), so the float64 copies of one heavy model are in memory at a time.
PARITY_WORKERS = 2
# Processes at a time between the parity run and the benchmark's timed workers (the explain pages beside the
# export runtimes' artifacts, `build_report`): about one core each.
PREPARE_WORKERS = 2


def parity_matrix(rows: list[dict], backends: list[str]) -> str:
    """One line per model, one cell per backend: checks passed and the eval-output error."""
    lines = ["| model | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for backend in backends:
            mine = [r for r in rows if r["model"] == model and r["backend"] == backend]
            if not mine:
                cells.append("-")
                continue
            unsupported = [r for r in mine if not r.get("supported", True)]
            mine = [r for r in mine if r.get("supported", True)]
            passed = sum(r["passed"] for r in mine)
            failed = [r["check"] for r in mine if not r["passed"]]
            ev = next((r["error"] for r in mine if r["check"] == "eval_output"), None)
            cell = f"{passed}/{len(mine)} ok"
            if ev is not None:
                cell += f", eval {ev:.1e}"
            if unsupported:
                cell += f", {len(unsupported)} export(s) n/a"
            if failed:
                cell += " — FAILED: " + ", ".join(failed)
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Which parity row vouches for a benchmark backend: (check, column). The export runtimes' rows carry their own
# check against the eager twin (`export_error`, batch 3 and 1); the eager Keras backends have the eval-output row
# of the parity run (at the parity size, not the benchmark's).
EAGER_PARITY = {"keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
SERVER_BATCH = 32


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def deployment_table(bench_rows: list[dict], parity_rows: list[dict] | None = None,
                     bench_meta: dict | None = None) -> str:
    """Per model and target, the fastest measured path: CPU server at batch 1 (latency p50) and at the server
    batch (infer throughput), GPU server (the same on CUDA rows), mobile (LiteRT at batch 1). Its ratio to native
    torch eager on the same target, and its parity error: an export runtime's against its eager twin, an eager
    Keras backend's against the torch twin (eval output, from `parity_rows`).

    When the benchmark's `bench_meta` says its run was contended (`benchmarks.schema.contention`: the rule of the
    harness's load warning), every ratio carries "(contended run: load L on N CPUs)" and a line under the table says
    why they are not to be quoted as they are."""
    from benchmarks.schema import CONTENDED_LOAD_PER_CPU, contention

    contended = contention(bench_meta)
    lines = ["| model | target | fastest measured path | figure | vs torch eager | parity error | paths measured |",
             "|---|---|---|--:|--:|--:|--:|"]

    def error_of(row):
        if row.get("export_error") is not None:
            return f"{row['export_error']:.1e} (artifact vs eager twin)"
        if row["backend"] in ("torch", "torch-compile"):
            return "reference" if row["backend"] == "torch" else "—"
        column = EAGER_PARITY.get(row["backend"])
        hit = next((p for p in parity_rows or [] if p["model"] == row["model"] and p["backend"] == column
                    and p["check"] == "eval_output"), None)
        return f"{hit['error']:.1e} (eval vs torch twin)" if hit and hit["error"] is not None else "—"

    for model in dict.fromkeys(r["model"] for r in bench_rows if not r.get("peer_of")):
        mine = [r for r in bench_rows if r["model"] == model and not r.get("peer_of") and r["dtype"] == "float32"]
        infer_batches = sorted({r["batch"] for r in mine if r["mode"] == "infer"})
        server = SERVER_BATCH if SERVER_BATCH in infer_batches else (infer_batches[-1] if infer_batches else None)
        targets = [
            ("CPU server, batch 1", [r for r in mine if r["device"] == "cpu" and r["mode"] == "latency"], "latency"),
            (f"CPU server, batch {server}", [r for r in mine if r["device"] == "cpu" and r["mode"] == "infer"
                                             and r["batch"] == server], "infer"),
            ("GPU server, batch 1", [r for r in mine if r["device"] == "cuda" and r["mode"] == "latency"], "latency"),
            ("GPU server, throughput", [r for r in mine if r["device"] == "cuda" and r["mode"] == "infer"], "infer"),
            ("mobile (LiteRT), batch 1", [r for r in mine if r["backend"] == "litert" and r["mode"] == "latency"],
             "latency"),
        ]
        for target, rows, mode in targets:
            measured = _ok(rows)
            if not measured:
                why = "no GPU in this run" if "GPU" in target else "not measured in this run"
                if rows:
                    why = f"{rows[0]['backend']}: {rows[0]['status']}"
                lines.append(f"| {model} | {target} | {why} | — | — | — | 0 |")
                continue
            if mode == "latency":
                best = min(measured, key=lambda r: r["latency_ms_p50"])
                figure = f"{best['latency_ms_p50']:.2f} ms p50 (p99 {best['latency_ms_p99']:.2f})"
                torch_row = next((r for r in mine if r["backend"] == "torch" and r["mode"] == "latency"
                                  and r["device"] == best["device"] and r["status"] == "ok"), None)
                ratio = torch_row["latency_ms_p50"] / best["latency_ms_p50"] if torch_row else None
            else:
                best = max(measured, key=lambda r: r["samples_per_sec"])
                figure = f"{best['samples_per_sec']:,.0f} img/s"
                ratio = best.get("ratio_to_torch")
            shown = "—" if ratio is None else f"{ratio:.2f}x"
            if contended and ratio is not None:
                shown += f" (contended run: {contended})"
            lines.append(f"| {model} | {target} | {best['backend']} ({best.get('compiler') or '—'}) | {figure} | "
                         f"{shown} | {error_of(best)} | {len(measured)} |")
    if contended:
        lines += ["", f"**Every ratio above comes from a contended run** ({contended} before the benchmark started; "
                      f"a run counts as contended past {CONTENDED_LOAD_PER_CPU:g} x the CPU count, the rule of its "
                      "load warning): other processes competed for the cores, so every figure here is noisy, and "
                      "torch eager's multi-threaded rows suffer most, which inflates a ratio to it. Re-run on an "
                      "idle machine before quoting a ratio."]
    return "\n".join(lines)


def chart_caption(bench_rows: list[dict], bench_meta: dict | None = None) -> str:
    """The line under the report's chart: what its panels show, how many rows it leaves to the tables below
    (`benchmarks.report.chart_note`), and whether its run was contended (`benchmarks.schema.contention`)."""
    from benchmarks.report import chart_note
    from benchmarks.schema import contention

    text = ("The chart draws the rows that ran, each backend in its own colour: throughput in samples/s per mode "
            "(higher is better) and batch-1 latency in ms (bar p50, dot p90, cap p99; lower is better).")
    note = chart_note(bench_rows)
    if note:
        text += f" {note[0].upper()}{note[1:]} below."
    contended = contention(bench_meta)
    if contended:
        text += f" **Contended run** ({contended}): its timings are noisy."
    return text


def markdown_to_html(text: str, title: str, image_png: bytes | None) -> str:
    """The report's Markdown as one self-contained page, converted by Python-Markdown (its `tables` extension);
    the chart (`![chart](...)`) goes in as a data URI, or out when there is none."""
    import markdown

    if image_png:
        data = base64.b64encode(image_png).decode()
        text = re.sub(r"!\[chart\]\([^)]*\)", f"![throughput and latency chart](data:image/png;base64,{data})", text)
    else:
        text = re.sub(r"!\[chart\]\([^)]*\)\n?", "", text)
    converter = markdown.Markdown(extensions=["tables"], output_format="html")
    # Text, never markup: an error quoted in a row ("<lambda>", "<unknown>") must show, not vanish or run.
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(text)
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!doctype html><html lang=en><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")


def explain_command(out: Path, parity_file: Path) -> list[str]:
    """`twins explain all` into `out` with the parity rows of `parity_file` (the report's pages, the documentation
    site's). The layer tables (names and shapes: the same on every Keras backend) are built on jax when it is
    installed, where a functional build is quickest (the 18 pages beside a test pass: 30 s on jax, 41 s on
    tensorflow), whatever KERAS_BACKEND says."""
    backend = ["--backend", "jax"] if "jax" in parity.installed_backends() else []
    return [sys.executable, "-m", "twins_cli.main", "explain", "all", "--out", str(out), "--parity", str(parity_file),
            *backend]


def explain_pages(out: Path, log) -> str:
    """`twins explain all` into `out/explain` with this run's parity rows (a subprocess: it builds every model in
    both frameworks), as the report's Markdown table of links."""
    index = out / "explain" / "index.json"
    index.unlink(missing_ok=True)  # a failed run must not leave an earlier run's pages looking current
    done = subprocess.run(explain_command(out / "explain", out / "parity.json"), capture_output=True, text=True)
    if done.returncode not in (0, 1) or not index.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        print(f"[report] twins explain failed (exit {done.returncode}): {tail}", file=log, flush=True)
        return f"`twins explain all` failed (exit {done.returncode}): {tail.splitlines()[-1] if tail else ''}"
    lines = ["| model | definitions paired | without a twin | docstrings naming a missing twin | Keras variables | "
             "layer-table mismatches |", "|---|--:|--:|--:|--:|--:|"]
    for s in json.loads(index.read_text()):
        lines.append(f"| [{s['model']}](explain/{s['model']}.html) | {s['pairs']} | {s['alone']} | {s['problems']} | "
                     f"{s['variables']} | {s['mismatched']} |")
    return "\n".join(lines)


def build_report(out_dir="reports/latest", quick=False, parity_backends=None, bench_backends="all,deploy",
                 log=sys.stderr) -> dict:
    import benchmarks
    from benchmarks.gate import Gate

    out = Path(out_dir)
    start = time.time()
    models = parity.names()
    backends = parity_backends or parity.installed_backends()
    scope = "the quick plan (QUICK_SUITE, as make test)" if quick else "every check"
    settings = QUICK_BENCH if quick else FULL_BENCH
    with tempfile.TemporaryDirectory(prefix="twins-report-exports-") as folder, \
            ThreadPoolExecutor(max_workers=PREPARE_WORKERS) as pool:
        # The quick run's parity workers leave the export artifacts that passed their checks in `folder`:
        # resnet18's at 64x64 in every format, among them the six the benchmark's export runtimes run at the same
        # size (`QUICK_BENCH`), which it then measures instead of exporting them again (`prepare_exports`). The
        # full sweep measures each model at its input size, not the parity size: nothing of that run is kept.
        print(f"[report] parity: {len(models)} models and variants x {', '.join(backends)}, {scope}", file=log,
              flush=True)
        parity_rows = parity.run_parity(models, backends + [TORCH_TWIN], quick=quick, log=log,
                                        parallel=PARITY_WORKERS, keep_exports=folder if quick else None)
        columns = backends + [TORCH_TWIN]
        parity_s = time.time() - start
        checkpoints.write_atomic(out / "parity.json", lambda tmp: tmp.write_text(json.dumps(parity_rows, indent=1)))

        # Nothing is timed yet: the explain pages (one process building every model, mostly on one core), the
        # benchmark's GPU probe and the artifacts the parity run did not leave (`twins export`, one process each)
        # share the cores, two processes at a time (1.8 GiB for the explain process, 1-1.5 GiB an export of
        # resnet18 at 64 px). The explain process goes on beside the benchmark workers' preparation: it holds the
        # benchmark's gate shared (`benchmarks.gate`), so no worker times a step until it is done.
        print("[report] explain: one page per model, twins side by side; beside it, the benchmark's GPU probe and "
              "the export runtimes' artifacts, then the benchmark workers' preparation", file=log, flush=True)
        gate_path = str(Path(folder) / "benchmark-gate")
        explaining = Gate(gate_path)
        explaining.shared()

        def explain_then_open_the_gate():
            try:
                return explain_pages(out, log)
            finally:
                explaining.close()

        pages = pool.submit(explain_then_open_the_gate)
        try:
            probe = pool.submit(benchmarks.probe_accelerators).result()
            on_cpu = benchmarks.probed_device(probe) == "cpu"
            artifacts = None
            if on_cpu:  # on a GPU the export runtimes are not measured
                artifacts = benchmarks.prepare_exports(
                    benchmarks.export_tasks(settings["models"], bench_backends, settings["img_size"]), folder,
                    pool=pool)

            print(f"[report] benchmarks: {settings}", file=log, flush=True)
            bench = benchmarks.run(
                models=settings["models"], backends=bench_backends, modes=("train", "infer", "latency"),
                batch_sizes=settings["batch_sizes"], img_size=settings["img_size"], warmup=settings["warmup"],
                repeats=settings["repeats"], out_dir=str(out), peers=not quick,
                latency_calls=settings["latency_calls"], skip=settings["skip"], artifacts=artifacts, probe=probe,
                gate=gate_path,
                side_by_side=settings.get("side_by_side", 1) if on_cpu else 1,
            )
        finally:
            explain = pages.result()
    bench_s = time.time() - start - parity_s

    unsupported = [r for r in parity_rows if not r.get("supported", True)]
    failed = [r for r in parity_rows if not r["passed"] and r.get("supported", True)]
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# twins report: Keras twin vs PyTorch twin",
        "",
        f"- generated {stamp} on {platform.node()} ({platform.machine()}), {'quick' if quick else 'full'} run; "
        f"parity {parity_s:.0f} s, benchmarks {bench_s:.0f} s",
        f"- parity: **{len(parity_rows) - len(failed) - len(unsupported)} passed, {len(failed)} failed** "
        f"({len(unsupported)} exports a backend cannot make here, `n/a` with the reason) over "
        f"{len(models)} models and variants x {len(backends)} Keras backends, up to {len(CHECKS)} checks each"
        + (" (quick run: the checks `make test` runs per model, `QUICK_SUITE`; `make parity` runs all)" if quick else ""),
        "",
        "## Parity matrix",
        "",
        "Each cell: checks passed on that Keras backend, and the eval output's relative error against the torch "
        "twin run in float64 (bound 1e-5, or 2x torch float32's own distance where larger). Checks (those that apply to the model): " + ", ".join(f"`{c}`" for c in CHECKS) + ". Details per model below.",
        "",
        parity_matrix(parity_rows, columns),
        "",
        "## Deployment: which path to ship, measured",
        "",
        "Per model and target, the fastest path this run measured (float32; the export runtimes run the artifact "
        "`twins export` writes), its ratio to native torch eager on the same target, and its parity error. "
        "`twins export MODEL --framework F --format X` writes the artifact.",
        "",
        deployment_table(bench["rows"], parity_rows, bench["meta"]),
        "",
        "## Throughput and latency",
        "",
        "![chart](benchmark.png)",
        "",
        chart_caption(bench["rows"], bench["meta"]),
        "",
        benchmarks.render_markdown(bench["rows"], bench["meta"]).replace("# Benchmark results", "").strip(),
        "",
        "## The twins side by side",
        "",
        "One page per model (`twins explain MODEL`): the Keras file beside the torch file, definition by definition "
        "(paired by their \"Twin of\" docstrings, then by name), the layer table (each Keras variable, the torch key "
        "it maps to, both shapes and the bridge rule) and the model's parity rows from this run.",
        "",
        explain,
        "",
        "## Parity details",
        "",
        parity_table(parity_rows, columns),
    ]
    text = "\n".join(lines) + "\n"
    md = checkpoints.write_atomic(out / "report.md", lambda tmp: tmp.write_text(text))
    chart = out / "benchmark.png"
    page = markdown_to_html(text, "twins report", chart.read_bytes() if chart.is_file() else None)
    page_path = checkpoints.write_atomic(out / "report.html", lambda tmp: tmp.write_text(page))
    return {"markdown": str(md), "html": str(page_path), "parity_failed": len(failed),
            "parity_rows": parity_rows, "bench": bench, "text": text}
