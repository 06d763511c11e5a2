"""Where `make test`'s time goes: the three passes run as `make test` runs them, each under a sampling
profiler (py-spy, every process of the tree, 10 samples a second, idle time included) and with a JUnit XML
of every test's time, then summarised and written as `docs/test-profile.md` beside an earlier summary.

    python3 tools/test_profile.py run OUT            # the passes (what `make test-profile` does first)
    python3 tools/test_profile.py summarize OUT      # OUT/summary.json from OUT/*.xml, OUT/*.stacks
    python3 tools/test_profile.py render BEFORE.json AFTER.json [--out docs/test-profile.md]

`run` takes the pass list from the Makefile (`make -s print-passes`), so it profiles exactly what `make
test` runs. The summary has, per pass: wall time, the tests' outcome counts, wall time per test file, the
30 slowest tests, the processes started (by kind: parity worker, `twins` command, benchmark worker, ...) and
the profile's split of the sampled time into imports, model builds, tracing and compilation, training
steps, exports, Chromium and the rest. A sample of a process that is only waiting on a child process is
left out of the split (the child's own samples count that time), so the split adds up to the time some
process of the tree was doing something; while two processes compute at once, both count.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATE = 10  # samples a second
SLOWEST = 30

# What a sample's stack says a process is doing; the first rule whose pattern occurs anywhere in the stack
# wins, so an import inside a model build counts as an import, a compilation inside a training step as
# compilation.
CATEGORIES = (
    ("Chromium (browser tests)", ("parity_tests/browser.py",)),
    ("waiting on a child process", ("Popen.wait ", "Popen._try_wait", "Popen.communicate", "Popen._communicate",
                                    "_invoke_run (torch/distributed/elastic", "wait_for_children")),
    ("imports", ("_find_and_load ", "_call_with_frames_removed (<frozen importlib._bootstrap>")),
    ("exports (write and reload artifacts)", ("twins/exports.py", "twins_cli/export.py", "keras/src/export/",
                                              "torch/onnx/", "torch/export/", "openvino/", "tf2onnx/")),
    ("tracing and compilation (XLA, tf.function, dynamo)", (
        "jax/_src/compiler.py", "jax/_src/interpreters/pxla.py", "jax/_src/interpreters/partial_eval.py",
        "jax/_src/dispatch.py", "jax/_src/compilation_cache", "jax/_src/pjit.py:_pjit_lower",
        "tensorflow/python/eager/polymorphic_function", "tensorflow/python/framework/func_graph.py",
        "tensorflow/python/autograph", "torch/_dynamo", "torch/_inductor", "torch/fx/")),
    ("model builds", ("build (keras_impl/__init__.py", "build (torch_impl/__init__.py")),
    ("training steps (fit, train loops, optimiser steps)", (
        "keras_impl/train.py", "torch_impl/train.py", "keras_impl/training.py", "torch_impl/training.py",
        "twins_cli/train.py", "keras/src/trainers/", "twins_cli/dp_parity.py", "torch/autograd/")),
    ("parity checks (forward passes, comparisons)", ("twins_cli/parity", "parity_tests/mutations.py")),
    ("benchmark timing loops", ("benchmarks/worker.py", "benchmarks/harness.py")),
    ("explain pages", ("twins_cli/explain.py", "twins_cli/pairing.py")),
    ("data (generated images, readers, transforms)", ("twins/data.py", "twins/shapes.py", "twins/datasets",
                                                      "cv2")),
)
OTHER = "other (test bodies, pytest, interpreter start)"


# ----------------------------------------------------------------------------------------------
# Running the passes


def passes() -> list[dict]:
    """`[{"backend": B, "args": [...pytest args]}]`, as the Makefile's test target runs them."""
    out = subprocess.run(["make", "-s", "print-passes"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result = []
    for line in out.strip().splitlines():
        backend, _, args = line.partition(":")
        result.append({"backend": backend.strip(), "args": shlex.split(args)})
    return result


def run(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    python = ROOT / ".venv" / "bin" / "python"
    record = {}
    for p in passes():
        b = p["backend"]
        cmd = [str(spy), "record", "-r", str(RATE), "--threads", "--subprocesses", "--idle", "-f", "raw",
               "-o", str(out / f"{b}.stacks"), "--", str(python), "-m", "pytest", *p["args"],
               "--junitxml", str(out / f"{b}.xml")]
        start = time.time()
        print(f"[test-profile] {b}: {' '.join(p['args'])}", file=sys.stderr, flush=True)
        cache_log = out / f"{b}.jaxcache.jsonl"
        cache_log.unlink(missing_ok=True)
        env = {**os.environ, "KERAS_BACKEND": b, "TWINS_JAX_CACHE_LOG": str(cache_log)}
        with open(out / f"{b}.log", "w") as log:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        record[b] = {"exit": code, "wall_s": round(time.time() - start, 1)}
        print(f"[test-profile] {b}: exit {code} in {record[b]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    (out / "passes.json").write_text(json.dumps(record, indent=1))
    return max((r["exit"] for r in record.values()), default=0)


# ----------------------------------------------------------------------------------------------
# Reading what a run left


def junit(path: Path) -> dict:
    tests = []
    counts = Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
        module = case.get("classname", "").split(".")
        file = "/".join(module[:2]) + ".py" if len(module) >= 2 else case.get("classname", "?")
        tests.append({"file": file, "test": case.get("name"), "seconds": float(case.get("time", 0)),
                      "outcome": outcome})
    return {"tests": tests, "counts": dict(counts)}


def stack_records(path: Path):
    """(frames, count) from py-spy's raw output; a process's command line may span lines."""
    pending = ""
    with open(path, errors="replace") as f:
        for line in f:
            pending += line
            stripped = pending.rstrip("\n")
            match = re.search(r" (\d+)$", stripped)
            if match and stripped.count('"') % 2 == 0:
                yield stripped[:match.start()], int(match.group(1))
                pending = ""


PROCESS = re.compile(r'process (\d+):"((?:[^"]|"(?=[^;]))*)"')


def process_kind(cmdline: str, depth: int) -> str:
    if depth == 0:
        return "pytest"
    words = cmdline.split()
    if "twins_cli.parity" in words:
        return "parity worker (twins_cli.parity)"
    if "twins_cli.main" in words:
        i = words.index("twins_cli.main")
        return f"twins {words[i + 1]}" if i + 1 < len(words) else "twins"
    if "benchmarks.worker" in cmdline:
        return "benchmark worker"
    if "torchrun" in cmdline or "torch.distributed.run" in cmdline:
        return "torchrun"
    if "multiprocessing" in cmdline or "from multiprocessing" in cmdline:
        return "multiprocessing / DataLoader worker"
    if " -c " in f" {cmdline} ":
        return "python -c (a test's own script)"
    return "other: " + " ".join(words[:3])[:60]


def classify(stack: str) -> str:
    for name, patterns in CATEGORIES:
        if any(p in stack for p in patterns):
            return name
    return OTHER


def profile(path: Path) -> dict:
    categories = Counter()
    kinds_time = Counter()
    processes: dict[str, str] = {}
    imports_by_depth = Counter()
    for stack, count in stack_records(path):
        procs = PROCESS.findall(stack)
        if not procs:
            continue
        pid, cmdline = procs[-1]
        depth = len(procs) - 1
        kind = process_kind(cmdline.replace("\n", " "), depth)
        processes[pid] = kind
        thread = re.search(r";thread \((\d+)\)", stack)
        if thread is None or thread.group(1) != pid:
            continue  # the process's main thread only: worker threads are mostly idle pools
        frames = stack[thread.end():]
        category = classify(frames)
        seconds = count / RATE
        categories[category] += seconds
        if category != "waiting on a child process":
            kinds_time[kind] += seconds
        if category == "imports":
            imports_by_depth["in pytest" if depth == 0 else "in subprocesses"] += seconds
    started = Counter(kind for kind in processes.values() if kind != "pytest")
    return {"categories": {k: round(v, 1) for k, v in categories.most_common()},
            "imports": {k: round(v, 1) for k, v in imports_by_depth.items()},
            "process_time": {k: round(v, 1) for k, v in kinds_time.most_common()},
            "processes_started": dict(started.most_common())}


def summarize(out: Path) -> dict:
    record = json.loads((out / "passes.json").read_text()) if (out / "passes.json").is_file() else {}
    summary = {"passes": {}}
    for xml in sorted(out.glob("*.xml"), key=lambda p: ["tensorflow", "jax", "torch"].index(p.stem)
                      if p.stem in ("tensorflow", "jax", "torch") else 9):
        b = xml.stem
        j = junit(xml)
        per_file = defaultdict(lambda: [0.0, 0])
        for t in j["tests"]:
            per_file[t["file"]][0] += t["seconds"]
            per_file[t["file"]][1] += 1
        entry = {
            "wall_s": record.get(b, {}).get("wall_s"),
            "tests_s": round(sum(t["seconds"] for t in j["tests"]), 1),
            "counts": j["counts"],
            "files": {f: {"seconds": round(s, 1), "tests": n}
                      for f, (s, n) in sorted(per_file.items(), key=lambda kv: -kv[1][0])},
            "slowest": sorted(j["tests"], key=lambda t: -t["seconds"])[:SLOWEST],
        }
        stacks = out / f"{b}.stacks"
        if stacks.is_file():
            entry["profile"] = profile(stacks)
        cache_log = out / f"{b}.jaxcache.jsonl"
        if cache_log.is_file():
            counts = [json.loads(line) for line in cache_log.read_text().splitlines() if line.strip()]
            entry["jax_cache"] = {"processes": len(counts), "requests": sum(c["requests"] for c in counts),
                                  "hits": sum(c["hits"] for c in counts)}
        summary["passes"][b] = entry
    return summary


# ----------------------------------------------------------------------------------------------
# The page


def minutes(seconds) -> str:
    if seconds is None:
        return "—"
    return f"{int(seconds // 60)}:{int(round(seconds % 60)):02d}"


def render(before: dict, after: dict, labels=("before", "after")) -> str:
    lines = [
        "# Where `make test`'s time goes",
        "",
        "Written by `make test-profile` (`tools/test_profile.py`): the three passes of `make test` on this machine "
        "(2 cores), each under py-spy (every process of the tree, 10 samples a second) with a JUnit XML of every "
        "test's time. Test times include their fixtures' setup; a module or session fixture counts in the first "
        "test that uses it. The figures are one run each, on a shared machine: minutes of noise, not seconds.",
        "",
        f"- **{labels[0]}**: {before.get('label', '')}",
        f"- **{labels[1]}**: {after.get('label', '')}",
        "",
        "## The passes",
        "",
        f"| pass | {labels[0]}: wall | tests (passed / skipped / failed) | {labels[1]}: wall | tests (passed / skipped / failed) |",
        "|---|--:|--:|--:|--:|",
    ]
    names = list(dict.fromkeys([*before["passes"], *after["passes"]]))
    total = [0.0, 0.0]
    for b in names:
        cells = []
        for i, s in enumerate((before, after)):
            p = s["passes"].get(b)
            if p is None:
                cells += ["—", "—"]
                continue
            wall = p["wall_s"] or p["tests_s"]
            total[i] += wall
            c = p["counts"]
            cells += [minutes(wall), f"{c.get('passed', 0)} / {c.get('skipped', 0)} / {c.get('failed', 0)}"]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append(f"| **all three** | **{minutes(total[0])}** | | **{minutes(total[1])}** | |")
    caches = [(b, [s["passes"].get(b, {}).get("jax_cache") for s in (before, after)]) for b in names]
    if any(any(c) for _, c in caches):
        lines += ["", "## JAX's persistent compilation cache", "",
                  "Compilations served from `JAX_COMPILATION_CACHE_DIR` (a clean clone starts with it empty), counted "
                  "from JAX's monitoring events in the processes that run Keras on jax: the parity worker, the "
                  "pytest process of the jax pass, `twins` commands on jax.", "",
                  f"| pass | {labels[0]} | {labels[1]} |", "|---|--:|--:|"]
        for b, pair in caches:
            cells = [f"{c['hits']} of {c['requests']} ({100 * c['hits'] / max(c['requests'], 1):.0f} %), "
                     f"{c['processes']} processes" if c else "—" for c in pair]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", "## Where the time goes (sampled)", "",
              "Seconds of samples per category, over every process of the pass (the main thread of each). "
              "A process waiting on its child counts under \"waiting\", which the child's own samples cover; "
              "time that two processes spend computing at once counts twice.", ""]
    for b in names:
        profs = [s["passes"].get(b, {}).get("profile") for s in (before, after)]
        if not any(profs):
            continue
        cats = list(dict.fromkeys(k for p in profs if p for k in p["categories"]))
        lines += [f"### {b}", "", f"| category | {labels[0]} s | {labels[1]} s |", "|---|--:|--:|"]
        for c in cats:
            vals = [f"{p['categories'].get(c, 0):.0f}" if p else "—" for p in profs]
            lines.append(f"| {c} | " + " | ".join(vals) + " |")
        for key, title in (("imports", "imports"), ("process_time", "time by process kind"),
                           ("processes_started", "processes started")):
            rows = list(dict.fromkeys(k for p in profs if p for k in p.get(key, {})))
            if not rows:
                continue
            lines += ["", f"| {title} | {labels[0]} | {labels[1]} |", "|---|--:|--:|"]
            for r in rows:
                vals = [(f"{p[key].get(r, 0):.0f}" if p else "—") for p in profs]
                lines.append(f"| {r} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Wall time per test file", ""]
    for b in names:
        files = [s["passes"].get(b, {}).get("files", {}) for s in (before, after)]
        order = sorted(set(files[0]) | set(files[1]), key=lambda f: -max(files[0].get(f, {}).get("seconds", 0),
                                                                          files[1].get(f, {}).get("seconds", 0)))
        lines += [f"### {b}", "", f"| file | {labels[0]} s (tests) | {labels[1]} s (tests) |", "|---|--:|--:|"]
        for f in order:
            vals = [(f"{fs[f]['seconds']:.0f} ({fs[f]['tests']})" if f in fs else "—") for fs in files]
            lines.append(f"| {f} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += [f"## The {SLOWEST} slowest tests", ""]
    for b in names:
        for label, s in zip(labels, (before, after)):
            slow = s["passes"].get(b, {}).get("slowest")
            if not slow:
                continue
            lines += [f"### {b}, {label}", "", "| s | test |", "|--:|---|"]
            for t in slow:
                lines.append(f"| {t['seconds']:.1f} | `{t['file']}::{t['test']}` |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/test_profile.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("out", type=Path)
    p = sub.add_parser("summarize")
    p.add_argument("out", type=Path)
    p.add_argument("--label", default="")
    p = sub.add_parser("render")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "test-profile.md")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.out)
    if args.command == "summarize":
        summary = summarize(args.out)
        summary["label"] = args.label
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"[test-profile] {args.out / 'summary.json'}", file=sys.stderr)
        return 0
    text = render(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    args.out.write_text(text)
    print(f"[test-profile] {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
