"""The GPU table: every registered model on the GPU backends, as one prepared command for a short GPU loan.

    make bench-gpu-plan                    # every row, its part, and the first part's estimated wall time
    make bench-gpu                         # on the GPU machine: part 1 into reports/gpu (at most 8 files)
    make bench-gpu PART=2 PREVIOUS=benchmarks/results/<device>-<date>/gpu.json
    make bench-gpu-rehearse                # the same plan on this CPU at toy sizes, both parts, end to end

What one loan measures (`plan`): every registered model, train and infer, in bfloat16 + channels-last (torch
backends) at a server batch per model (`server_batch`: 256 for the ResNet-50 class, less where an image is
large, more for CIFAR's 32 px), on `torch`, `keras-jax`, `torch-compile`, `keras-torch` and `keras-torch-jit`
(Keras' torch backend with `jit_compile=True`: its torch.compile path, measured as it is); resnet50 also in
float32 with TF32 off (TF32 is allowed in the bfloat16 rows, whose convolutions and matmuls are bfloat16);
batch-1 latency (p50/p90/p99) of every model on its fastest two paths by inference throughput; and GPU parity,
`twins parity` eval rows of every model with Keras on CUDA (jax and torch backends, TF32 off). The rows are
ordered by what a deployment decision needs first: part 1 holds every model on `torch` and `keras-jax` (their
latency on both, the float32 rows, the parity run); then each model on torch-compile, keras-torch and
keras-torch-jit in turn, packed into as many further parts of at most `WALL_LIMIT_S` as the cost model needs
(`make bench-gpu-plan` lists them: five parts in all by the committed calibration, a loan each), and last the
latency rows of any path that turns out among a model's fastest two.

How it fits a loan: one worker process per model and backend (keras-jax: per row, since jax's peak-memory
counter has no reset), `SIDE_BY_SIDE` of them alive at once on the machine's 16 cores; each imports, builds,
and runs its first step (the compilation) beside the others, and takes the run's gate exclusively for the rest
of its warm-up and its timed steps (`benchmarks.gate`, `timed_only`), so timed loops run one at a time while
the next models compile. The seconds a timed loop overlapped another worker's first step are recorded per
worker (`timed_beside_first_steps`). The part stops starting workers when the cost model says the next one
would not finish inside `WALL_LIMIT_S` (its rows then say so), and each worker's time limit is what is left.
A row that runs out of GPU memory beside others is measured again alone at the end, time permitting.

The cost model (`estimate`): per row, a process start, a model build, a first step (compile) linear in the
model's layer count, and a step time of the model's FLOPs over a measured rate (or a per-layer floor for the
eager Keras-on-torch path, which is launch-bound); a simulation of the workers, the gate and the parity process
gives the part's wall time. Its constants (`benchmarks/gpu_calibration.json`) are fitted by `calibrate` from
the committed CUDA benchmark results; a constant without a measurement behind it says it is assumed, and why.

Files (`--out`, at most eight): gpu.json (rows, meta, the plan, the estimate against the wall time), gpu.md,
gpu.png, parity_gpu.json and parity_gpu.txt, logs.txt (every worker's log), plan.txt, and profile.md when a
target is missed (torch.profiler's top kernels for a torch path, jax's profiler trace summarised for keras-jax).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import glob
import heapq
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from twins import registry

from benchmarks import harness, report, schema
from benchmarks.gate import BESIDE, beside_first_steps
from benchmarks.gate import overlaps as gate_overlaps

REPO_ROOT = harness.REPO_ROOT
CALIBRATION_PATH = os.path.join(REPO_ROOT, "benchmarks", "gpu_calibration.json")
DEFAULT_OUT = os.path.join(REPO_ROOT, "reports", "gpu")

# In the order a deployment decision needs them: part 1 is every model on the first two.
GPU_BACKENDS = ("torch", "keras-jax", "torch-compile", "keras-torch", "keras-torch-jit")
FIRST_BACKENDS = ("torch", "keras-jax")
PARITY_BACKENDS = ("jax", "torch")  # Keras backends of `twins parity` on the GPU machine (no tensorflow there)
FP32_MODEL = "resnet50"
LATENCY_PATHS = 2
# A realistic server batch per model: 256 for the ResNet-50 class and the zoo; the saliency U-Net's 256 px maps
# and PSPNet's 473 px crops at the batches their recipes train with on one GPU; CIFAR's 32 px images at 1024.
SERVER_BATCH = 256
BATCH_OVERRIDES = {"saliency_unet": 64, "pspnet": 16, "simclr_ssl": 1024, "simclr_sl": 1024}
# The loan: 15 minutes of device time, start-up and transfers included; a part runs within 8 of them.
WALL_LIMIT_S = 480.0
TARGET_TORCH_RESNET50_TRAIN = 3500.0  # img/s, torch-compile, bfloat16, channels-last, batch 256 (issue's target)
TARGET_KERAS_JAX_RATIO = 0.9
LOG_LINES = 400  # of each worker's output in logs.txt (a file that comes back from the GPU machine: 16 MiB at most)
PROFILE_MISSES = 3  # keras-jax rows under the target profiled per part: the furthest under it

PROFILES = {
    # the GPU run: workers alive at a time, steps, calls; sizes and batches the models' own
    "gpu": {"device": "cuda", "side_by_side": 6, "warmup": 5, "repeats": 20, "latency_calls": 100,
            "toy": False, "wall_limit_s": WALL_LIMIT_S},
    # the rehearsal on a CPU: the same plan and code at toy sizes (each model's smallest input, batch 2)
    "rehearsal": {"device": "cpu", "side_by_side": 2, "warmup": 1, "repeats": 1, "latency_calls": 5,
                  "toy": True, "wall_limit_s": None},
}


def log(message: str) -> None:
    print(f"[bench-gpu] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PlanRow:
    model: str
    backend: str
    mode: str
    dtype: str
    batch: int
    img_size: int
    channels_last: bool
    part: int
    chosen_at_run_time: bool = False  # the last part's latency rows: on whichever paths are then the fastest two

    def line(self) -> str:
        where = "fastest-two path, chosen at run time" if self.chosen_at_run_time else self.backend
        return (f"{self.model:14s} {where:16s} {self.mode:7s} {self.dtype:8s} batch {self.batch:<5d} "
                f"{self.img_size}px  part {self.part}")


def server_batch(model: str) -> int:
    return BATCH_OVERRIDES.get(model, SERVER_BATCH)


def toy_size(model: str, mode: str = "infer") -> int:
    """A model's smallest input size that it accepts in `mode` (the rehearsal's size): inception_v3 trains its aux
    head at 299 px only (`registry.inception_min_input_size`; the first full rehearsal found its training rows
    failing at 75 px, its eval size)."""
    info = registry.get(model)
    size = info.min_input_size
    if model == "inception_v3" and mode == "train":
        size = registry.inception_min_input_size(training=True, aux_logits=True)
    while info.size_problem(size, size):
        size += 1
    return size


def resolve_models(models=None) -> list[str]:
    if models in (None, "all", ["all"]):
        return registry.names()
    return harness.resolve_models(models)


def plan(models=None, profile: str = "gpu", cal: dict | None = None, part_s: float | None = None) -> list[PlanRow]:
    """Every row the run measures, in the order a deployment decision needs them, each with its part: part 1 is
    every model on `torch` and `keras-jax` in bfloat16 (train, infer, latency; the parity run beside), then each
    model on torch-compile, keras-torch and keras-torch-jit in turn, then resnet50 in float32 on the five paths,
    packed into parts of at most `WALL_LIMIT_S` by the cost model at the GPU's sizes (`estimate`), and last the
    latency rows of the paths that turn out among a model's fastest two. A rehearsal keeps the parts and runs
    them at toy sizes. `part_s`: the parts' length (default `WALL_LIMIT_S`; the test's rehearsal of one model asks
    for short parts, so that its plan has several)."""
    names = resolve_models(models)
    cal = cal or load_calibration()
    fp32 = [FP32_MODEL] if FP32_MODEL in names else []  # resnet50's float32 rows, when resnet50 is planned
    gpu = PROFILES["gpu"]

    def row(model, backend, mode, dtype, chosen=False):
        batch = 1 if mode == "latency" else server_batch(model)
        return PlanRow(model, backend, mode, dtype, batch, registry.get(model).input_size,
                       backend in schema.TORCH_BACKENDS, 0, chosen)

    first = [row(m, b, mode, "bfloat16") for m in names for b in FIRST_BACKENDS for mode in ("train", "infer", "latency")]
    groups = []  # one worker's rows each, in priority order
    for backend in GPU_BACKENDS:
        if backend in FIRST_BACKENDS:
            continue
        groups += [[row(m, backend, mode, "bfloat16") for mode in ("train", "infer")] for m in names]
    # resnet50 in float32 (TF32 off) on every path, after every model's bfloat16 rows
    groups += [[row(m, backend, mode, "float32") for mode in ("train", "infer")] for backend in GPU_BACKENDS
               for m in fp32]
    groups.append([row(m, "fastest-two", "latency", "bfloat16", chosen=True) for m in names])

    # part 1 holds `first` whatever its estimate; then each group joins the current part while it fits
    placed, part, current = [], 1, [dataclasses.replace(r, part=1) for r in first]
    for group in groups:
        trial = [dataclasses.replace(r, part=part) for r in current + group]
        if current and estimate(trial, gpu, cal, part, names)["wall_s"] > (part_s or gpu["wall_limit_s"]):
            placed += current
            part, current = part + 1, [dataclasses.replace(r, part=part + 1) for r in group]
        else:
            current = trial
    placed += current
    if PROFILES[profile]["toy"]:
        placed = [dataclasses.replace(r, img_size=toy_size(r.model, r.mode), batch=1 if r.mode == "latency" else 2)
                  for r in placed]
    return placed


def parity_models(models=None) -> list[str]:
    return resolve_models(models)


# ---------------------------------------------------------------------------------------------
# Model sizes (FLOPs from torch's flop counter on the meta device: no weights, no compute; a second or two)


_STATS: dict = {}


def model_stats(model: str, size: int) -> dict:
    """{"flops": forward FLOPs of one image at `size`, "layers": leaf modules of the torch twin, "params"}."""
    key = (model, size)
    if key not in _STATS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        import torch_impl

        with torch.device("meta"):
            module = torch_impl.build(model)
            x = torch.empty(1, 3, size, size)
        module.eval()
        with FlopCounterMode(display=False) as counter:
            module(x)
        _STATS[key] = {
            "flops": float(counter.get_total_flops()),
            "layers": sum(1 for m in module.modules() if not list(m.children())),
            "params": sum(p.numel() for p in module.parameters()),
        }
    return _STATS[key]


def step_flops(model: str, size: int, mode: str, batch: int) -> float:
    """A train step is forward + backward (twice the forward's FLOPs): three forwards."""
    return model_stats(model, size)["flops"] * batch * (3 if mode == "train" else 1)


# ---------------------------------------------------------------------------------------------
# Calibration: the cost model's constants, fitted from committed CUDA results


def _calibration_sources() -> list[str]:
    found = glob.glob(os.path.join(REPO_ROOT, "benchmarks", "results", "*", "*", "benchmark.json"))
    found += glob.glob(os.path.join(REPO_ROOT, "benchmarks", "results", "*", "benchmark.json"))
    found += glob.glob(os.path.join(REPO_ROOT, "benchmarks", "results", "*", "gpu.json"))
    keep = []
    for path in sorted(set(found)):
        with open(path) as f:
            meta = json.load(f)["meta"]
        if meta.get("device") == "cuda":
            keep.append(path)
    return keep


def _fit_line(points):
    """Least squares a + b*x over (x, y) points; one distinct x: a line through the origin."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        x, y = max(points)
        return 0.0, y / x
    n = len(points)
    mx, my = sum(xs) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


# What no committed measurement gives, stated and used until a GPU run measures it (`calibrate` then fits it).
ASSUMED = {
    "keras-torch-jit": "no CUDA row yet: compile 1.5x torch-compile's (Keras compiles its whole train step), "
                       "steps at torch-compile's rate, start as keras-torch's",
    "layer_floor": "per-layer floor of a step (launches): 30 us (torch), 15 us (compiled, jax); no CUDA batch-1 "
                   "row yet. keras-torch's is measured: eager Keras on torch took the same time per layer for "
                   "resnet18 and resnet50 (its dispatch, not the arithmetic, sets its step)",
    "parity": "twins parity eval rows: 20 s start and 3 s + 0.02 s per layer per model, per Keras backend, the "
              "backends one after the other (the 2026-11-22 H100 parity run timed all seven checks of two models, "
              "not eval rows alone)",
    "fixed": "10 s for the GPU probe and 10 s for writing the files; 20 TFLOP/s, 10 s and 15 s where a rate, a first "
             "step or a start has no fit; 0.5 s per row and 5 s per profile on top of the steps",
    "scale": "rates and first steps measured on an H100 at batch 64 hold on the H200 at the plan's batches (a "
             "larger batch usually runs faster per image: the estimate leans long); each first-step line is fitted "
             "through two points, resnet18 in bfloat16 and resnet50 in float32",
    "row_overhead": "1 s per row in a worker (build, data, optimiser) beside the first step",
    "side_by_side": "first steps (compilations) take as long beside five others on the 16-core GPU machine as "
                    "they took alone on the H100 machine of 2026-11-22 (16 cores)",
}
LAYER_FLOOR_S = {"torch": 30e-6, "torch-compile": 15e-6, "keras-jax": 15e-6, "keras-torch-jit": 15e-6}
ROW_OVERHEAD_S = 1.0


def calibrate(paths=None) -> dict:
    """The cost model's constants from CUDA benchmark results (default: every committed one)."""
    paths = list(paths or _calibration_sources())
    rates = collections.defaultdict(list)   # (backend, mode, dtype) -> achieved FLOP/s
    first = collections.defaultdict(list)   # (backend, mode) -> (layers, first step s)
    floors = collections.defaultdict(list)  # (backend, mode) -> s per layer (launch-bound paths)
    starts = collections.defaultdict(list)  # backend -> a worker's own seconds: start, imports, exit
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        meta, rows = result["meta"], result["rows"]
        options = meta.get("options") or meta["settings"]  # benchmark.json / gpu.json
        if "parts" in meta:  # a gpu.json: the rows its own workers measured, not those merged from earlier parts
            rows = [r for r in rows if r.get("gpu_part") in meta["parts"]]
        spent = collections.defaultdict(float)  # backend -> seconds its rows account for
        for row in rows:
            if row["status"] != schema.STATUS_OK or row["mode"] == "latency":
                continue
            step_s = row["step_ms_median"] / 1e3
            spent[row["backend"]] += (row["first_step_ms"] / 1e3 + (options["warmup"] - 1 + options["repeats"]) * step_s
                                      + ROW_OVERHEAD_S)
            if row.get("peer_of"):
                continue
            stats = model_stats(row["model"], row["img_size"])
            flops = step_flops(row["model"], row["img_size"], row["mode"], row["batch"])
            rates[(row["backend"], row["mode"], row["dtype"])].append(flops / step_s)
            floors[(row["backend"], row["mode"])].append(step_s / stats["layers"])
            first[(row["backend"], row["mode"])].append((stats["layers"], row["first_step_ms"] / 1e3))
        walls = collections.defaultdict(list)
        for worker in meta["workers"]:
            walls[worker["backend"]].append(worker["wall_s"])
        for backend, seconds in spent.items():
            if walls[backend]:
                starts[backend].append(max(0.0, (sum(walls[backend]) - seconds) / len(walls[backend])))

    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if values else None

    calibration = {
        "sources": [os.path.relpath(p, REPO_ROOT) for p in paths],
        "rate_flops": {"|".join(k): median(v) for k, v in sorted(rates.items())},
        "first_step": {},
        "start_s": {k: round(median(v), 2) for k, v in sorted(starts.items())},
        "layer_floor_s": {},
        "assumed": dict(ASSUMED),
        "row_overhead_s": ROW_OVERHEAD_S,
    }
    for key, points in sorted(first.items()):
        a, b = _fit_line(points)
        calibration["first_step"]["|".join(key)] = {"a": round(a, 3), "b": round(b, 5), "points": points}
    for key, values in sorted(floors.items()):
        if key[0] == "keras-torch":  # eager Keras on torch: launch-bound, the floor is its measured step per layer
            calibration["layer_floor_s"]["|".join(key)] = max(values)
    return calibration


def load_calibration() -> dict:
    with open(CALIBRATION_PATH) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# The cost model


def _rate(cal, backend, mode, dtype):
    rates = cal["rate_flops"]
    for b in (backend, "torch-compile" if backend == "keras-torch-jit" else backend, "torch"):
        for d in (dtype, "bfloat16", "float32"):
            value = rates.get(f"{b}|{mode}|{d}")
            if value:
                return value
    return 20e12


def step_seconds(cal, row: PlanRow, backend: str | None = None) -> float:
    backend = backend or row.backend
    stats = model_stats(row.model, row.img_size)
    mode = "infer" if row.mode == "latency" else row.mode
    compute = step_flops(row.model, row.img_size, mode, row.batch) / _rate(cal, backend, mode, row.dtype)
    floor_per_layer = cal["layer_floor_s"].get(f"{backend}|{mode}") or LAYER_FLOOR_S.get(backend, 30e-6) * (
        3 if mode == "train" else 1)
    return max(compute, stats["layers"] * floor_per_layer)


def first_step_seconds(cal, row: PlanRow, backend: str | None = None) -> float:
    backend = backend or row.backend
    mode = "infer" if row.mode == "latency" else row.mode
    scale = 1.0
    if backend == "keras-torch-jit" and f"keras-torch-jit|{mode}" not in cal["first_step"]:
        backend, scale = "torch-compile", 1.5
    fit = cal["first_step"].get(f"{backend}|{mode}") or cal["first_step"].get(f"{backend}|train")
    layers = model_stats(row.model, row.img_size)["layers"]
    return scale * max(0.5, fit["a"] + fit["b"] * layers) if fit else 10.0


def start_seconds(cal, backend: str) -> float:
    starts = cal["start_s"]
    return starts.get(backend) or starts.get("keras-torch" if backend == "keras-torch-jit" else "torch") or 15.0


@dataclass
class Job:
    """One worker process: its backend and rows, and what the cost model expects of it."""
    backend: str
    rows: list
    tag: str
    prep_s: float = 0.0
    timed_s: float = 0.0
    profile_only: bool = False  # measured again for a profile of a row that missed a target: its row is not kept
    first_error: str | None = None  # a retry's: what the row's first attempt said (kept if the retry cannot start)


def make_jobs(rows: list[PlanRow], settings: dict, cal: dict) -> list[Job]:
    """One worker per model, backend and dtype (keras-jax: per row on CUDA); a model's latency rides in the
    worker of its infer row."""
    groups: dict = {}
    for row in rows:
        if row.chosen_at_run_time:
            continue
        split = row.backend == "keras-jax" and settings["device"] == "cuda" and row.mode == "train"
        key = (row.backend, row.model, row.dtype, row.mode if split else "")
        groups.setdefault(key, []).append(row)
    jobs = []
    for (backend, model, dtype, mode), members in groups.items():
        job = Job(backend, members, f"{backend}-{model}-{dtype}" + (f"-{mode}" if mode else ""))
        job.prep_s = start_seconds(cal, backend) + sum(
            ROW_OVERHEAD_S + first_step_seconds(cal, r) for r in members)
        job.timed_s = sum(
            (settings["warmup"] - 1 + (settings["latency_calls"] if r.mode == "latency" else settings["repeats"]))
            * step_seconds(cal, r) + 0.5 for r in members)
        jobs.append(job)
    return order_jobs(jobs)


def order_jobs(jobs: list[Job]) -> list[Job]:
    """Native torch's workers first (short preparations: the timed loops start early, and every ratio is computed
    against their rows, which a deadline must not cut), then the longest preparation first (so the last
    compilations do not trail the timed loops); the part's order kept between equals."""
    return sorted(jobs, key=lambda j: (j.backend != schema.REFERENCE_BACKEND, -j.prep_s))


def parity_seconds(cal, models: list[str], settings: dict) -> float:
    """`twins parity`'s eval rows: one worker per Keras backend, one after the other."""
    per_backend = 20.0 + sum(3.0 + 0.02 * model_stats(m, registry.get(m).input_size)["layers"] for m in models)
    return per_backend * len(PARITY_BACKENDS)


def slots_for(part: int, settings: dict) -> int:
    """Workers alive at a time (the parity run of part 1 is one process more beside them: on the GPU machine,
    seven processes on 16 cores)."""
    return max(1, settings["side_by_side"])


def simulate(jobs: list[Job], slots: int) -> float:
    """Wall time of `jobs` started in order, `slots` alive at a time, each preparing beside the others and then
    timing under one exclusive gate (first come, first served)."""
    clock, lock_free = 0.0, 0.0
    free = [0.0] * slots
    heapq.heapify(free)
    ready = []  # (prep_end, index)
    pending = list(enumerate(jobs))
    finish = 0.0
    while pending or ready:
        while pending and free and (not ready or free[0] <= min(r[0] for r in ready)):
            start = heapq.heappop(free)
            i, job = pending.pop(0)
            heapq.heappush(ready, (start + job.prep_s, i))
        prep_end, i = heapq.heappop(ready)
        begin = max(prep_end, lock_free)
        lock_free = begin + jobs[i].timed_s
        heapq.heappush(free, lock_free)
        finish = max(finish, lock_free)
        clock = lock_free
    return max(finish, clock)


FIXED_S = {"probe": 10.0, "write": 10.0}


def estimate(rows: list[PlanRow], settings: dict, cal: dict, part: int, models: list[str]) -> dict:
    """The cost model's wall time of one part of `rows`: its workers simulated (`simulate`) beside the parity run
    (part 1), plus the GPU probe and the writing of the files. A part's latency rows chosen at run time are
    costed as one compiled path (torch-compile) per model entering its fastest two."""
    mine = [r for r in rows if r.part == part]
    slots = slots_for(part, settings)
    jobs = make_jobs(mine, settings, cal)
    # after the part's workers: the latency rows chosen then (a keras-jax row under the target is profiled in its
    # own worker, three steps more, when native torch's row was measured before it: `Runner.references`)
    after = [latency_job(dataclasses.replace(r, backend="torch-compile", channels_last=True, chosen_at_run_time=False),
                         settings, cal) for r in mine if r.chosen_at_run_time]
    parity = parity_seconds(cal, models, settings) if part == 1 else 0.0
    main = max(parity, simulate(jobs, slots))
    wall = FIXED_S["probe"] + main + (simulate(after, slots) if after else 0.0) + FIXED_S["write"]
    return {"part": part, "jobs": len(jobs) + len(after), "rows": len(mine), "parity_s": round(parity, 1),
            "prep_s": round(sum(j.prep_s for j in jobs + after), 1),
            "timed_s": round(sum(j.timed_s for j in jobs + after), 1), "wall_s": round(wall, 1)}


def latency_job(row: PlanRow, settings: dict, cal: dict) -> Job:
    job = Job(row.backend, [row], f"{row.backend}-{row.model}-latency")
    job.prep_s = start_seconds(cal, row.backend) + ROW_OVERHEAD_S + first_step_seconds(cal, row)
    job.timed_s = (settings["warmup"] - 1 + settings["latency_calls"]) * step_seconds(cal, row) + 0.5
    return job


def profile_job(row: PlanRow, settings: dict, cal: dict) -> Job:
    """A worker that measures `row` again and profiles three of its warm steps (its row is not kept)."""
    job = Job(row.backend, [row], f"{row.backend}-{row.model}-{row.mode}-{row.dtype}-profile", profile_only=True)
    job.prep_s = start_seconds(cal, row.backend) + ROW_OVERHEAD_S + first_step_seconds(cal, row)
    job.timed_s = (settings["warmup"] + settings["repeats"]) * step_seconds(cal, row) + 5.0
    return job


def parts_of(rows: list[PlanRow]) -> list[int]:
    return sorted({r.part for r in rows})


def render_plan(rows, estimates, settings, models, cal) -> str:
    out = [f"GPU table plan: {len(models)} models, backends {', '.join(GPU_BACKENDS)} "
           "(keras-torch-jit = keras-torch with jit_compile=True), TF32 off in the float32 rows and the parity run, "
           f"{settings['warmup']} warm-up + {settings['repeats']} timed steps, latency {settings['latency_calls']} calls, "
           f"{settings['side_by_side']} workers alive at a time"]
    out.append(f"{'model':14s} {'backend':16s} {'mode':7s} {'dtype':8s} batch  size  part")
    out += [r.line() for r in rows]
    out.append(f"parity: twins parity {','.join(models)} --backends {','.join(PARITY_BACKENDS)} "
               "--checks eval_output (Keras on CUDA, TF32 off), part 1")
    for e in estimates:
        out.append(f"part {e['part']}: {e['rows']} rows in {e['jobs']} workers; preparation {e['prep_s']:.0f} s "
                   f"(over {settings['side_by_side']} workers), timed {e['timed_s']:.0f} s, parity {e['parity_s']:.0f} s; "
                   f"estimated wall time {e['wall_s'] / 60:.1f} min")
    out.append("cost model: benchmarks/gpu_calibration.json, fitted from " + ", ".join(cal["sources"]))
    out += [f"assumed ({key}): {text}" for key, text in ASSUMED.items()]
    first = estimates[0]
    out.append(f"estimated wall time: {first['wall_s'] / 60:.1f} min")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# The run


def _settings(profile: str, **overrides) -> dict:
    settings = dict(PROFILES[profile])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def _options(row_like: PlanRow, settings: dict) -> dict:
    """A worker's options. TF32: off for the float32 rows (full float32, as the parity bounds assume); allowed for
    the bfloat16 rows, whose convolutions and matmuls are bfloat16 anyway (what a deployment would run)."""
    options = {"latency_calls": settings["latency_calls"], "device": settings["device"], "dtype": row_like.dtype,
               "warmup": settings["warmup"], "repeats": settings["repeats"],
               "channels_last": bool(row_like.channels_last), "tf32": row_like.dtype == "bfloat16"}
    if settings.get("compile_backend"):
        options["compile_backend"] = settings["compile_backend"]
    return options


def _config(row: PlanRow) -> dict:
    return {"model": row.model, "backend": row.backend, "mode": row.mode, "batch": row.batch,
            "img_size": row.img_size, "peer_of": None}


def _env(backend: str, settings: dict) -> dict:
    env = harness._base_env()
    env.pop("KERAS_BACKEND", None)
    if backend in schema.KERAS_BACKENDS:
        env["KERAS_BACKEND"] = schema.KERAS_BACKEND_ENV[backend]
    if settings["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    else:
        # several workers share the GPU: none may take most of its memory up front (jax's default is 75 %)
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


class Runner:
    """One part (or both) of the plan on this machine: workers side by side, timed one at a time, within a deadline."""

    def __init__(self, settings, cal, out_dir, workdir, deadline):
        self.settings, self.cal, self.out_dir, self.workdir, self.deadline = settings, cal, out_dir, workdir, deadline
        self.gate = os.path.join(workdir, "gate")
        self.references = os.path.join(workdir, "torch_rows.json")
        self.rows: list[dict] = []
        self.workers: list[dict] = []
        self.logs: list[str] = []
        self.lock = threading.Lock()
        self.live: set = set()

    def left(self) -> float:
        return self.deadline - time.monotonic() if self.deadline else float("inf")

    def run_job(self, job: Job, profile_keys=()) -> None:
        settings = self.settings
        needed = job.prep_s + job.timed_s
        if self.left() < needed:
            why = (f"not started: the cost model expects this worker to take {needed:.0f} s and {max(self.left(), 0):.0f} s "
                   f"of the part's {settings['wall_limit_s']:.0f} s were left")
            log(f"{job.tag}: {why}")
            if job.profile_only:
                return
            status = schema.STATUS_NOT_MEASURED
            if job.first_error:  # a retry that cannot start: the first attempt's reason stands
                status, why = job.first_error.split(": ", 1)[0], f"{job.first_error} (measuring it again alone: {why})"
            with self.lock:
                self.rows += [schema.failed_row(_config(r), _options(r, settings), status, why) for r in job.rows]
            return
        options = _options(job.rows[0], settings)
        # rows asked for by key, and keras-jax rows under the target against the torch rows measured so far
        options["profile"] = {"keys": [list(k) for k in profile_keys], "dir": self.workdir,
                              "below": {"file": self.references, "ratio": TARGET_KERAS_JAX_RATIO,
                                        "backends": ["keras-jax"]}}
        configs = [_config(r) for r in job.rows]
        timeout = min(harness.DEFAULT_TIMEOUT_S, max(self.left(), 1.0))
        log(f"{job.tag}: starting ({len(configs)} row(s); expected {job.prep_s:.0f} s preparing, {job.timed_s:.0f} s timed)")
        try:
            rows, info, output = harness.run_worker(job.backend, configs, options, _env(job.backend, settings), timeout,
                                                    self.workdir, job.tag, verbose=False, gate=self.gate,
                                                    live=self.live, gate_timed_only=True)
        except Exception as exc:  # the harness's own failure: this job's rows say so, the part goes on
            why = f"the harness could not run this worker: {type(exc).__name__}: {exc}"
            rows = [schema.failed_row(c, options, schema.STATUS_ERROR, why) for c in configs]
            info = {"backend": job.backend, "tag": job.tag, "returncode": None, "timed_out": False, "wall_s": 0.0,
                    "rows": len(configs), "gate": []}
            output = [why + "\n"]
        info["expected_prep_s"], info["expected_timed_s"] = round(job.prep_s, 1), round(job.timed_s, 1)
        for row in rows:  # one jax worker measured this row after another: its peak counter cannot say
            if row["backend"] == "keras-jax" and settings["device"] == "cuda" and row is not rows[0]:
                row["peak_mem_mb"] = None
                row["peak_mem_source"] = ("not separable: jax's peak counter has no reset and this worker measured "
                                          "another row first")
        ok = sum(r["status"] == schema.STATUS_OK for r in rows)
        log(f"{job.tag}: {ok}/{len(rows)} row(s) measured in {info['wall_s']:.0f} s")
        with self.lock:
            if not job.profile_only:
                self.rows += rows
            if job.backend == schema.REFERENCE_BACKEND:  # what the keras-jax workers compare themselves with
                measured = {f"{r['model']}|{r['mode']}|{r['dtype']}": r["samples_per_sec"] for r in self.rows
                            if r["backend"] == schema.REFERENCE_BACKEND and r["status"] == schema.STATUS_OK}
                report.write_atomic(self.references, json.dumps(measured))
            self.workers.append(info)
            self.logs += [f"===== {job.tag}: exit {info['returncode']}, {info['wall_s']} s =====\n"] + output[-LOG_LINES:]

    def run_jobs(self, jobs: list[Job], slots: int, profile_keys=()) -> None:
        pool = ThreadPoolExecutor(max_workers=slots)
        try:
            list(pool.map(lambda j: self.run_job(j, [k for k in profile_keys if _job_has(j, k)]), jobs))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list(self.live):
                harness._kill_group(process)
            raise
        pool.shutdown()


def _plan_row(r: dict, part: int) -> PlanRow:
    return PlanRow(r["model"], r["backend"], r["mode"], r["dtype"], r["batch"], r["img_size"],
                   r["backend"] in schema.TORCH_BACKENDS, part)


def _job_has(job: Job, key) -> bool:
    return any((r.model, r.backend, r.mode, r.dtype) == tuple(key) for r in job.rows)


def _key(row: dict) -> tuple:
    return (row["model"], row["backend"], row["mode"], row["dtype"])


def fastest_paths(rows: list[dict], model: str, n: int = LATENCY_PATHS) -> list[str]:
    """A model's `n` fastest backends by bfloat16 inference throughput among its measured rows."""
    measured = [r for r in rows if r["model"] == model and r["mode"] == "infer" and r["dtype"] == "bfloat16"
                and r["status"] == schema.STATUS_OK and r.get("samples_per_sec")]
    measured.sort(key=lambda r: -r["samples_per_sec"])
    return [r["backend"] for r in measured[:n]]


def target_misses(rows: list[dict], fp32_model: str = FP32_MODEL) -> list[dict]:
    """The issue's targets, checked on measured GPU rows: torch resnet50 (torch-compile, bf16, channels-last)
    training at least 3,500 img/s; keras-jax at least 0.9x native torch per model and mode."""
    misses = []
    for r in rows:
        if r["status"] != schema.STATUS_OK or r["dtype"] != "bfloat16" or r["mode"] == "latency":
            continue
        if (r["model"], r["backend"], r["mode"]) == (fp32_model, "torch-compile", "train") and \
                r["samples_per_sec"] < TARGET_TORCH_RESNET50_TRAIN:
            misses.append({"row": _key(r), "target": f">= {TARGET_TORCH_RESNET50_TRAIN:,.0f} img/s",
                           "measured": r["samples_per_sec"]})
        if r["backend"] == "keras-jax" and r.get("ratio_to_torch") is not None and \
                r["ratio_to_torch"] < TARGET_KERAS_JAX_RATIO:
            misses.append({"row": _key(r), "target": f">= {TARGET_KERAS_JAX_RATIO}x torch",
                           "measured": r["ratio_to_torch"]})
    return misses


def run_parity(models: list[str], settings: dict, out_dir: str, timeout_s: float, live: set) -> dict:
    """`twins parity` eval rows of every model with Keras on this machine's device (TF32 off: the parity
    engine turns it off), written as parity_gpu.json and parity_gpu.txt. Its own process group (`live` while it
    runs), so a timeout or a stopped run ends its workers too; the interval it ran is returned (`BESIDE`)."""
    json_path = os.path.join(out_dir, "parity_gpu.json")
    env = _env("keras-jax", settings)
    env.pop("KERAS_BACKEND", None)
    command = [sys.executable, "-m", "twins_cli.main", "parity", ",".join(models), "--backends",
               ",".join(PARITY_BACKENDS), "--checks", "eval_output", "--json", json_path]
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        live.add(process)
        try:
            code = process.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            harness._kill_group(process)
            process.wait()
            code = None
        finally:
            live.discard(process)
        output.seek(0)
        text = output.read()
    if code is None:
        text += f"\n[bench-gpu] twins parity ran past its {timeout_s:.0f} s and was stopped\n"
    ended = time.monotonic()
    report.write_atomic(os.path.join(out_dir, "parity_gpu.txt"), " ".join(command[1:]) + "\n\n" + text)
    rows = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            payload = json.load(f)
        rows = payload["rows"] if isinstance(payload, dict) else payload
    return {"command": "python " + " ".join(command[1:]), "exit": code, "wall_s": round(ended - started, 1),
            "rows": len(rows), "passed": sum(bool(r.get("passed")) for r in rows),
            "failed": [f"{r['model']} {r['backend']} {r['check']}: {r.get('error')}" for r in rows
                       if not r.get("passed")],
            "interval": [BESIDE, started, ended]}


def _stopped(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


KERAS_WHEELS = ("keras", "namex", "optree")  # what the GPU machine's image lacks of the project's imports


def ensure_keras(wheels: str | None) -> None:
    """Keras (and what it needs that the GPU image lacks) from wheels carried to a machine without a registry:
    installed with pip into a folder of its own, first on this process's path and every worker's."""
    import importlib.util

    if importlib.util.find_spec("keras") is not None:
        return
    found = sorted(glob.glob(os.path.join(wheels, "*.whl"))) if wheels else []
    if not found:
        raise SystemExit(f"bench-gpu: keras is not installed here and no wheels were found in {wheels!r}; on a "
                         "machine with the package registry run `make bench-gpu-wheels` (it writes .whl/) and bring "
                         "that folder along")
    target = os.path.join(tempfile.gettempdir(), "twins-gpu-site")
    log(f"installing {', '.join(os.path.basename(w) for w in found)} into {target} (no index, no dependencies)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", target, *found], check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, target)


def run(part="1", models=None, profile: str = "gpu", out_dir: str = DEFAULT_OUT, previous=None,
        compile_backend=None, side_by_side=None, wheels=None, part_s=None) -> dict:
    """Run one part of the plan (`plan` numbers them) or all of them in turn ("all"); write at most eight files into
    `out_dir`. `previous`: gpu.json files of earlier parts (a list, or comma-separated), merged. Returns the result."""
    started = time.monotonic()
    settings = _settings(profile, compile_backend=compile_backend, side_by_side=side_by_side)
    names = resolve_models(models)
    cal = load_calibration()
    every = plan(names, profile, cal, part_s)
    known = parts_of(every)
    text = str(part)
    if text == "all":
        parts = known
    elif text.isdigit() and int(text) in known:
        parts = [int(text)]
    elif text.endswith("-") and text[:-1].isdigit() and int(text[:-1]) in known:
        parts = [p for p in known if p >= int(text[:-1])]
    else:
        raise ValueError(f"part: expected one of {', '.join(map(str, known))}, N- (part N and those after it) or "
                         f"all, got {part!r}")
    gpu_rows = plan(names, "gpu", cal, part_s)
    # the GPU run's estimates of these parts (a rehearsal reports them too: its own CPU wall time is not what they model)
    estimates = [estimate(gpu_rows, PROFILES["gpu"], cal, p, names) for p in parts]
    wall_limit = settings["wall_limit_s"]
    deadline = started + wall_limit * len(parts) - FIXED_S["write"] if wall_limit else None
    os.makedirs(out_dir, exist_ok=True)
    for name in OUT_FILES:  # what an earlier run left in the folder is not this run's (at most eight files come back)
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    earlier, earlier_meta = {}, {}
    for path in ([p for p in previous.split(",") if p] if isinstance(previous, str) else list(previous or [])):
        with open(path) as f:
            loaded = json.load(f)
        for r in loaded["rows"]:  # one row per key: a later file's measured row wins over an earlier one's
            if r["status"] == schema.STATUS_OK or _key(r) not in earlier:
                earlier[_key(r)] = r
        earlier_meta = {**loaded["meta"], **{k: v for k, v in earlier_meta.items() if v}}
        log(f"read {len(loaded['rows'])} rows of part(s) {loaded['meta'].get('parts')} from {path}")
    earlier = [r for r in earlier.values() if r.get("gpu_part") not in parts]
    missing = [p for p in known if p < min(parts) and not any(r.get("gpu_part") == p for r in earlier)]
    if missing and any(r.chosen_at_run_time for r in every if r.part in parts):
        log(f"warning: no rows of part(s) {', '.join(map(str, missing))} (--previous): the latency rows choose each "
            "model's fastest two paths among the rows this run has")

    if settings["device"] == "cuda":
        ensure_keras(wheels)
        probe = harness.probe_accelerators()
        if not (probe.get("torch_cuda") or probe.get("jax_gpu")):
            raise SystemExit("bench-gpu: no GPU is visible to torch or jax on this machine; `make bench-gpu-rehearse` "
                             "runs the same plan on the CPU")
    else:
        probe = {"gpu_names": [], "cuda_version": None}
    log(f"{profile}: parts {', '.join(map(str, parts))} of the plan, {len(names)} models, device {settings['device']}; "
        + "; ".join(f"part {e['part']} estimated {e['wall_s'] / 60:.1f} min on the GPU" for e in estimates))
    parity = None
    if threading.current_thread() is threading.main_thread():  # a stop (SIGTERM) ends the workers too (`run_jobs`)
        signal.signal(signal.SIGTERM, _stopped)
    with tempfile.TemporaryDirectory(prefix="twins-gpu-") as workdir:
        runner = Runner(settings, cal, out_dir, workdir, deadline)
        # the torch target's row is profiled where it is measured (three steps more, it has compiled already); a
        # rehearsal profiles its first model's keras-jax training row there too, whether or not it missed
        profile_keys = [(FP32_MODEL if FP32_MODEL in names else names[0], "torch-compile", "train", "bfloat16")]
        if profile == "rehearsal":
            profile_keys.append((names[0], "keras-jax", "train", "bfloat16"))
        try:
            parity_thread = None
            for p in parts:
                mine = [r for r in every if r.part == p]
                jobs = make_jobs(mine, settings, cal)
                if p == 1:  # the parity run beside the workers
                    holder = {}
                    parity_thread = threading.Thread(daemon=True, target=lambda: holder.setdefault(
                        "result", run_parity(parity_models(names), settings, out_dir,
                                             min(runner.left(), harness.DEFAULT_TIMEOUT_S), runner.live)))
                    parity_thread.start()
                slots = slots_for(p, settings)
                log(f"part {p}: {len(jobs)} workers, {slots} alive at a time")
                before = len(runner.rows)
                runner.run_jobs(jobs, slots, profile_keys)
                if p == 1 and parity_thread is not None:
                    parity_thread.join()
                    parity = holder.get("result")
                chosen = [r for r in mine if r.chosen_at_run_time]
                if chosen:  # the latency rows of the paths now among a model's fastest two, where not measured yet
                    latency_jobs = []
                    for template in chosen:
                        measured = earlier + runner.rows
                        done = {r["backend"] for r in measured if r["model"] == template.model and r["mode"] == "latency"
                                and r["status"] == schema.STATUS_OK}
                        for backend in fastest_paths(measured, template.model):
                            if backend not in done:
                                latency_jobs.append(latency_job(dataclasses.replace(
                                    template, backend=backend, channels_last=backend in schema.TORCH_BACKENDS,
                                    chosen_at_run_time=False), settings, cal))
                    log(f"part {p}: latency on paths newly among the fastest two: {len(latency_jobs)} worker(s)")
                    runner.run_jobs(order_jobs(latency_jobs), slots)
                for r in runner.rows[before:]:
                    r["gpu_part"] = p  # which part measured it (gpu.json's rows; `calibrate` reads a part's own)
            # rows that ran out of memory beside other workers: once more, alone, while time is left
            again = [r for r in runner.rows if r["status"] == schema.STATUS_OOM]
            if again:
                log(f"{len(again)} row(s) ran out of GPU memory beside other workers: measuring them again alone")
                runner.rows = [r for r in runner.rows if r["status"] != schema.STATUS_OOM]
                retry = []
                for r in again:
                    plan_row = _plan_row(r, parts[-1])
                    job = Job(r["backend"], [plan_row], f"{r['backend']}-{r['model']}-{r['mode']}-{r['dtype']}-alone",
                              first_error=f"{r['status']}: {r['error']}")
                    job.prep_s = start_seconds(cal, r["backend"]) + ROW_OVERHEAD_S + first_step_seconds(cal, plan_row)
                    job.timed_s = (settings["warmup"] - 1 + settings["repeats"]) * step_seconds(cal, plan_row)
                    retry.append(job)
                before = len(runner.rows)
                runner.run_jobs(retry, 1)
                for r in runner.rows[before:]:
                    r["gpu_part"] = parts[-1]
        except BaseException:  # a stop (Ctrl-C, SIGTERM): no worker or parity process goes on on the GPU
            for process in list(runner.live):
                harness._kill_group(process)
            raise
        # keras-jax rows under 0.9x torch: the worst few measured again in a worker of their own, profiled
        target_model = FP32_MODEL if FP32_MODEL in names else names[0]
        rows = earlier + runner.rows
        harness.add_ratios(rows)
        mine_now = {_key(r): r for r in runner.rows if r["status"] == schema.STATUS_OK}
        profiled = {os.path.basename(p) for p in glob.glob(os.path.join(workdir, "profile-*.md"))}
        jax_misses = sorted((m for m in target_misses(rows, target_model)
                             if m["row"][1] == "keras-jax" and tuple(m["row"]) in mine_now
                             and f"profile-keras-jax-{m['row'][0]}-{m['row'][2]}-{m['row'][3]}.md" not in profiled),
                            key=lambda m: m["measured"])
        wanted = [tuple(m["row"]) for m in jax_misses][:PROFILE_MISSES]
        profile_jobs = [profile_job(_plan_row(mine_now[key], parts[-1]), settings, cal) for key in wanted]
        if profile_jobs:
            log(f"profiling {len(profile_jobs)} keras-jax row(s) under {TARGET_KERAS_JAX_RATIO}x torch: "
                + ", ".join(" ".join(k) for k in wanted))
            runner.run_jobs(profile_jobs, slots_for(parts[-1], settings), wanted)
        misses = target_misses(rows, target_model)
        profiles = sorted(glob.glob(os.path.join(workdir, "profile-*.md")))
        profile_text = "".join(open(p).read() + "\n" for p in profiles)

    holders = {w["tag"]: w["gate"] for w in runner.workers}
    if parity and parity.get("interval"):
        holders["twins parity"] = [parity["interval"]]
    overlapping = gate_overlaps(holders)
    for problem in overlapping:
        log(f"warning: {problem}")
    wall_s = round(time.monotonic() - started, 1)
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "profile": profile,
        "parts": parts,
        "device": settings["device"],
        "device_name": ", ".join(probe.get("gpu_names") or []) or harness._cpu_model(),
        "cuda_version": probe.get("cuda_version"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {name: harness._version(name) for name in harness.PACKAGES},
        "git": harness._git_state(),
        "tf32": "off in the float32 rows, allowed in the bfloat16 rows; off in the parity run",
        "settings": settings,
        "estimates": estimates,
        "wall_s": wall_s,
        "calibration_sources": cal["sources"],
        "workers": runner.workers,
        "timing_overlaps": overlapping,
        "timed_beside_first_steps": beside_first_steps(holders),
        "parity": parity or earlier_meta.get("parity"),
        "targets_missed": misses,
        "previous": previous,
    }
    result = {"meta": meta, "rows": rows, "plan": [asdict(r) for r in every if r.part in parts]}
    write(result, out_dir, runner.logs, render_plan(every, estimates, settings, names, cal), profile_text)
    log(f"done in {wall_s:.0f} s (the GPU run of these parts: estimated {sum(e['wall_s'] for e in estimates):.0f} s); "
        f"files in {out_dir}")
    return result


# ---------------------------------------------------------------------------------------------
# Files


def _fmt(value, digits=3):
    return report._fmt(value, digits)


def render_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    out = ["# GPU table", ""]
    out.append(f"- **{meta['date']}**, {meta['profile']} on **{meta['device']}** ({meta['device_name']}), "
               f"{meta['cpu_count']} CPUs; parts {', '.join(map(str, meta['parts']))}; wall time {meta['wall_s']:.0f} s "
               f"(the GPU run of these parts: estimated {sum(e['wall_s'] for e in meta['estimates']):.0f} s)")
    shown = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    s = meta["settings"]
    out.append(f"- {shown}; TF32 off in the float32 rows, allowed in the bfloat16 ones; {s['warmup']} warm-up + {s['repeats']} timed steps per row (median); "
               f"latency: {s['latency_calls']} batch-1 calls; compiler of the compiled paths: "
               f"{s.get('compile_backend') or 'inductor'}")
    beside = meta.get("timed_beside_first_steps") or {}
    overlaps = meta["timing_overlaps"]
    out.append((f"- **{len(overlaps)} timed loops overlapped another's** (see gpu.json); " if overlaps else
                "- no timed loop overlapped another; ")
               + f"{len(beside)} worker(s) timed while another worker ran its first (compiling) step: "
               + (", ".join(f"{k} {v:.1f} s" for k, v in beside.items()) or "none"))
    out.append("")
    for dtype in ("bfloat16", "float32"):
        for mode in ("train", "infer"):
            table = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
            if not table:
                continue
            backends = [b for b in GPU_BACKENDS if any(r["backend"] == b for r in table)]
            out.append(f"## {mode} · {dtype}" + (" · channels-last (torch backends)" if dtype == "bfloat16" else "")
                       + " · samples/s (ratio to torch)")
            out.append("")
            out.append("| model | batch | size | " + " | ".join(backends) + " |")
            out.append("|---|--:|--:|" + "--:|" * len(backends))
            for model in dict.fromkeys(r["model"] for r in table):
                cells = []
                for b in backends:
                    r = next((x for x in table if x["model"] == model and x["backend"] == b), None)
                    if r is None:
                        cells.append("")
                    elif r["status"] == schema.STATUS_OK:
                        ratio = f" ({r['ratio_to_torch']:.2f})" if r.get("ratio_to_torch") is not None else ""
                        cells.append(f"{_fmt(r['samples_per_sec'])}{ratio}")
                    else:
                        cells.append(f"{r['status']}")
                first = next(x for x in table if x["model"] == model)
                out.append(f"| {model} | {first['batch']} | {first['img_size']} | " + " | ".join(cells) + " |")
            out.append("")
    lat = [r for r in rows if r["mode"] == "latency"]
    if lat:
        out += ["## batch-1 latency · bfloat16 · ms (p50 / p90 / p99)", "",
                "| model | backend | p50 | p90 | p99 | status |", "|---|---|--:|--:|--:|---|"]
        for r in lat:
            out.append(f"| {r['model']} | {r['backend']} | {_fmt(r['latency_ms_p50'])} | {_fmt(r['latency_ms_p90'])} | "
                       f"{_fmt(r['latency_ms_p99'])} | {r['status']} |")
        out.append("")
    compiled = [r for r in rows if r["status"] == schema.STATUS_OK and r.get("first_step_ms")]
    if compiled:
        out += ["## first step (compilation, autotuning), s: not in the throughput", "",
                "| model | dtype | mode | " + " | ".join(GPU_BACKENDS) + " |", "|---|---|---|" + "--:|" * len(GPU_BACKENDS)]
        for key in dict.fromkeys((r["model"], r["dtype"], r["mode"]) for r in compiled):
            cells = []
            for b in GPU_BACKENDS:
                r = next((x for x in compiled if (x["model"], x["dtype"], x["mode"], x["backend"]) == (*key, b)), None)
                cells.append(_fmt(r["first_step_ms"] / 1e3) if r else "")
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        out.append("")
    failed = [r for r in rows if r["status"] != schema.STATUS_OK]
    if failed:
        out += ["## rows not measured, and why", ""]
        out += [f"- {r['model']} {r['backend']} {r['mode']} {r['dtype']}: **{r['status']}**: "
                f"{report._short_error(r.get('error'), 300)}" for r in failed]
        out.append("")
    parity = meta.get("parity")
    if parity:
        out += ["## GPU parity (eval rows, Keras on this device, TF32 off)", "",
                f"`{parity['command']}`: {parity['passed']}/{parity['rows']} rows pass (exit {parity['exit']}, "
                f"{parity['wall_s']:.0f} s); the table is parity_gpu.txt"]
        out += [f"- failed: {line}" for line in parity["failed"]]
        out.append("")
    out += ["## targets", ""]
    if meta["targets_missed"]:
        out += [f"- missed: {' '.join(m['row'])}: {m['target']}, measured {_fmt(m['measured'])} (profile.md)"
                for m in meta["targets_missed"]]
    else:
        out.append("- none missed among the measured rows (torch-compile resnet50 bf16 train >= 3,500 img/s; "
                   "keras-jax >= 0.9x torch)")
    return "\n".join(out) + "\n"


OUT_FILES = ("gpu.json", "gpu.md", "gpu.png", "plan.txt", "logs.txt", "profile.md", "parity_gpu.json", "parity_gpu.txt")


def write(result: dict, out_dir: str, logs: list[str], plan_text: str, profile_text: str) -> list[str]:
    """gpu.json, gpu.md, gpu.png, plan.txt, logs.txt (and profile.md when a target was missed), each atomically;
    with parity_gpu.json and parity_gpu.txt (written by the parity run) at most eight files."""
    files = {name: os.path.join(out_dir, name) for name in ("gpu.json", "gpu.md", "gpu.png", "plan.txt", "logs.txt")}
    if result["meta"]["targets_missed"] or profile_text:
        files["profile.md"] = os.path.join(out_dir, "profile.md")
        report.write_atomic(files["profile.md"], "# Profiles\n\nThe torch target's row (torch-compile resnet50 "
                            "training, bfloat16) is profiled where it is measured; keras-jax rows under "
                            f"{TARGET_KERAS_JAX_RATIO}x torch, the {PROFILE_MISSES} furthest under it per part, in a "
                            "worker of their own. Three warm steps each, run alone.\n\n" + (
            profile_text or "No profile was taken (the profiled rows were not measured).\n"))
    result["meta"]["files"] = sorted(os.path.basename(p) for p in files.values())
    report.write_atomic(files["gpu.json"], json.dumps(result, indent=1) + "\n")
    report.write_atomic(files["gpu.md"], render_markdown(result))
    report.write_atomic(files["plan.txt"], plan_text)
    report.write_atomic(files["logs.txt"], "".join(logs))
    chart_rows = [r for r in result["rows"] if r["dtype"] == "bfloat16" and r["mode"] in ("train", "infer")]
    report.render_chart(chart_rows, files["gpu.png"],
                        title=f"samples/s, bfloat16, {result['meta']['device_name']} (higher is better)")
    return list(files.values())


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print every row the GPU run measures and the estimated wall time")
    p.add_argument("--models", default="all")
    p.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    r = sub.add_parser("run", help="measure a part of the plan (on the GPU machine; --profile rehearsal: this CPU)")
    r.add_argument("--part", default="1", help="a part's number (`plan` lists them), N- (part N and those after "
                                               "it), or all (default: 1)")
    r.add_argument("--models", default="all")
    r.add_argument("--profile", choices=sorted(PROFILES), default="gpu")
    r.add_argument("--out", default=DEFAULT_OUT)
    r.add_argument("--previous", default=None,
                   help="comma-separated gpu.json files of earlier parts: their rows are merged, and the latency rows "
                        "of the last part choose among all of them")
    r.add_argument("--compile-backend", default=None,
                   help="dynamo backend of every torch.compile (default inductor; the test's rehearsal: eager)")
    r.add_argument("--side-by-side", type=int, default=None)
    for sub_parser in (p, r):
        sub_parser.add_argument("--part-seconds", type=float, default=None,
                                help=f"the parts' length by the cost model (default: {WALL_LIMIT_S:.0f})")
    r.add_argument("--wheels", default=os.path.join(REPO_ROOT, ".whl"),
                   help="folder of wheels to install when keras is missing (the GPU machine; default .whl)")
    c = sub.add_parser("calibrate", help="fit the cost model to CUDA benchmark results and write gpu_calibration.json")
    c.add_argument("results", nargs="*", help="benchmark.json / gpu.json files (default: every committed CUDA one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            settings = _settings(args.profile)
            names = resolve_models(args.models)
            cal = load_calibration()
            every = plan(names, args.profile, cal, args.part_seconds)
            gpu_rows = plan(names, "gpu", cal, args.part_seconds)
            estimates = [estimate(gpu_rows, PROFILES["gpu"], cal, p, names) for p in parts_of(every)]
            sys.stdout.write(render_plan(every, estimates, settings, names, cal))
            return 0
        if args.command == "calibrate":
            calibration = calibrate(args.results or None)
            report.write_atomic(CALIBRATION_PATH, json.dumps(calibration, indent=1) + "\n")
            print(f"wrote {os.path.relpath(CALIBRATION_PATH, REPO_ROOT)} from {len(calibration['sources'])} result files")
            return 0
        result = run(args.part, args.models, args.profile, args.out, args.previous, args.compile_backend,
                     args.side_by_side, args.wheels, args.part_seconds)
    except (ValueError, registry.UnknownModelError) as exc:
        print(f"python -m benchmarks.gpu: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render_markdown(result))
    measured = sum(r["status"] == schema.STATUS_OK for r in result["rows"])
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
