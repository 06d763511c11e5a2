"""The GPU table (`benchmarks/gpu.py`: `make bench-gpu-plan`, `make bench-gpu`, `make bench-gpu-rehearse`).

No GPU here: what can be checked before a loan is spent. The plan (every registered model on the five GPU
backends, part 1 every model on torch and keras-jax, each part within the loan's 8 minutes by the cost model), the
cost model's calibration (what the committed CUDA results give, and a changed result changes it), its simulation of
workers that prepare side by side and time one at a time, the gate that keeps their timed loops apart while
others compile (shown to catch an overlap without it), the targets, and the rehearsal: the run itself, every part,
on this CPU at toy sizes, end to end, with every file it writes (`parity_tests/gpu_rehearsal.py`).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from benchmarks import gpu, schema
from benchmarks.gate import beside_first_steps, overlaps
from parity_tests.gpu_rehearsal import COMPILE_BACKEND, MODEL, PART_S
from parity_tests.gpu_rehearsal import ENV as REHEARSAL_ENV
from twins import registry


@pytest.fixture(scope="module")
def calibration():
    return gpu.load_calibration()


@pytest.fixture(scope="module")
def gpu_plan(calibration):
    return gpu.plan(None, "gpu", calibration)


def test_the_plan_has_every_model_on_the_five_backends_and_part_one_on_torch_and_keras_jax(gpu_plan, calibration):
    names = registry.names()
    assert set(gpu.GPU_BACKENDS) == {"torch", "torch-compile", "keras-jax", "keras-torch", "keras-torch-jit"}
    for model in names:
        for backend in gpu.GPU_BACKENDS:
            modes = {r.mode for r in gpu_plan if r.model == model and r.backend == backend and r.dtype == "bfloat16"}
            assert {"train", "infer"} <= modes, (model, backend, modes)
        first = [r for r in gpu_plan if r.model == model and r.part == 1]
        assert {(r.backend, r.mode) for r in first if r.dtype == "bfloat16"} >= {
            (b, m) for b in gpu.FIRST_BACKENDS for m in ("train", "infer", "latency")}
        # each model's latency on its fastest two paths: chosen when the last part has every infer row
        assert any(r.chosen_at_run_time and r.model == model for r in gpu_plan)
    # after part 1's rows, the rest in priority order: the compiled and Keras-on-torch paths, then float32; a part
    # never holds a row of a lower priority than one in a later part
    order = [b for b in gpu.GPU_BACKENDS if b not in gpu.FIRST_BACKENDS]
    rest = [r for r in gpu_plan if not r.chosen_at_run_time and (r.backend not in gpu.FIRST_BACKENDS or
                                                                r.dtype == "float32")]
    ranks = [(r.dtype == "float32", order.index(r.backend) if r.backend in order else -1) for r in rest]
    assert ranks == sorted(ranks) and [r.part for r in rest] == sorted(r.part for r in rest)
    assert all(r.part == gpu.parts_of(gpu_plan)[-1] for r in gpu_plan if r.chosen_at_run_time)
    assert {(r.backend, r.mode) for r in gpu_plan if r.dtype == "float32"} == {
        (b, m) for b in gpu.GPU_BACKENDS for m in ("train", "infer")}
    assert {r.model for r in gpu_plan if r.dtype == "float32"} == {"resnet50"}
    assert all(r.channels_last == (r.backend in schema.TORCH_BACKENDS) for r in gpu_plan if not r.chosen_at_run_time)
    assert {r.batch for r in gpu_plan if r.model == "resnet50" and r.mode != "latency"} == {256}
    for part in gpu.parts_of(gpu_plan):
        assert gpu.estimate(gpu_plan, gpu.PROFILES["gpu"], calibration, part, names)["wall_s"] <= gpu.WALL_LIMIT_S


def test_bench_gpu_plan_prints_every_row_and_ends_with_the_first_parts_estimate(capsys):
    assert gpu.main(["plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if re.search(r" part \d+$", line) and not line.startswith("parity:")]
    assert len(rows) == len(gpu.plan())
    assert any("keras-torch-jit" in line for line in rows)
    last = re.fullmatch(r"estimated wall time: (\d+\.\d) min", out[-1])
    assert last and float(last.group(1)) <= 8.0, out[-1]
    part1 = next(line for line in out if line.startswith("part 1:"))
    assert f"estimated wall time {last.group(1)} min" in part1


def test_the_calibration_is_what_the_committed_cuda_results_give(calibration, tmp_path):
    fitted = gpu.calibrate()
    assert fitted["sources"] == calibration["sources"] and calibration["sources"]
    for key in ("rate_flops", "start_s", "layer_floor_s"):
        assert fitted[key] == pytest.approx(calibration[key], rel=1e-6), key
    assert {k: (v["a"], v["b"]) for k, v in fitted["first_step"].items()} == {
        k: (v["a"], v["b"]) for k, v in calibration["first_step"].items()}
    # a result that says otherwise changes it: torch's resnet50 training twice as slow halves its fitted rate
    source = json.loads(open(gpu.REPO_ROOT + "/" + calibration["sources"][1]).read())
    for row in source["rows"]:
        if (row["model"], row["backend"], row["mode"]) == ("resnet50", "torch", "train"):
            row["step_ms_median"] *= 2
    changed = tmp_path / "benchmark.json"
    changed.write_text(json.dumps(source))
    refit = gpu.calibrate([changed])
    assert refit["rate_flops"]["torch|train|float32"] == pytest.approx(
        calibration["rate_flops"]["torch|train|float32"] / 2, rel=1e-6)


def test_the_simulation_prepares_side_by_side_and_times_one_at_a_time():
    def job(prep, timed):
        return gpu.Job("torch", [], "j", prep_s=prep, timed_s=timed)

    # two slots: A and B prepare together (0-10), time one after the other (10-15, 15-20); C starts in A's slot
    # at 15, is ready at 16 and times after B (20-21)
    assert gpu.simulate([job(10, 5), job(10, 5), job(1, 1)], 2) == pytest.approx(21)
    # one slot: everything in sequence
    assert gpu.simulate([job(10, 5), job(10, 5), job(1, 1)], 1) == pytest.approx(32)
    # timing-bound: the timed loops queue behind each other whatever the slots
    assert gpu.simulate([job(1, 10)] * 4, 4) == pytest.approx(41)


def test_the_targets_are_checked_on_the_measured_rows():
    def row(backend, mode, samples, ratio=None, model="resnet50", dtype="bfloat16"):
        return {"model": model, "backend": backend, "mode": mode, "dtype": dtype, "status": "ok",
                "samples_per_sec": samples, "ratio_to_torch": ratio}

    fine = [row("torch-compile", "train", 3600.0), row("keras-jax", "train", 3300.0, 0.92)]
    assert gpu.target_misses(fine) == []
    slow = [row("torch-compile", "train", 3400.0), row("keras-jax", "infer", 2000.0, 0.85, model="vgg11_bn"),
            row("torch-compile", "train", 900.0, dtype="float32")]  # the float32 row has no target
    missed = gpu.target_misses(slow)
    assert [m["row"] for m in missed] == [("resnet50", "torch-compile", "train", "bfloat16"),
                                          ("vgg11_bn", "keras-jax", "infer", "bfloat16")]


GATE_HOLDER = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("gate", "benchmarks/gate.py")
gate_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate_module)

def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

gate = gate_module.Gate(None if sys.argv[1] == "none" else sys.argv[1], timed_only=True)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
gate.shared()
with gate.first_step():
    busy(0.3)
with gate.timed():
    busy(0.3)
gate.release()
print(json.dumps(gate.intervals))
"""


def _hold_together(gate_path: str, n: int = 2) -> dict:
    at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", GATE_HOLDER, gate_path, str(at)], cwd=gpu.REPO_ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return {f"w{i}": json.loads(p.communicate(timeout=60)[0]) for i, p in enumerate(procs)}


def test_a_timed_only_gate_lets_workers_compile_beside_each_other_and_time_apart(tmp_path):
    held = _hold_together(str(tmp_path / "gate"))
    assert overlaps(held) == []
    for intervals in held.values():
        assert [mode for mode, _, _ in intervals] == ["first_step", "prepare", "exclusive", "prepare"]
    # both compiled at once (no lock): their first steps overlap
    (_, a0, a1), (_, b0, b1) = held["w0"][0], held["w1"][0]
    assert max(a0, b0) < min(a1, b1)
    # without the gate's lock the same two workers time at once, and the run's check says so
    unlocked = _hold_together("none")
    assert any("timed steps" in problem for problem in overlaps(unlocked))
    # what a timed loop overlapped of another's first step is measured (none here: both compiled first)
    assert set(beside_first_steps(held)) <= {"w0", "w1"}


@pytest.mark.skipif(not os.environ.get(REHEARSAL_ENV), reason=f"the rehearsal runs where {REHEARSAL_ENV}=1: make "
                    "test's tensorflow pass, make test-gpu-rehearsal")
def test_the_rehearsal_runs_every_part_of_the_plan_end_to_end(gpu_rehearsal):
    code, log = gpu_rehearsal.wait()
    assert code == 0, log[-4000:]
    first, rest = gpu_rehearsal.out / "part1", gpu_rehearsal.out / "rest"
    for out in (first, rest):
        files = sorted(p.name for p in out.iterdir())
        assert len(files) <= 8 and {"gpu.json", "gpu.md", "gpu.png", "plan.txt", "logs.txt"} <= set(files), files
    assert {"parity_gpu.json", "parity_gpu.txt", "profile.md"} <= {p.name for p in first.iterdir()}
    part1 = json.loads((first / "gpu.json").read_text())
    result = json.loads((rest / "gpu.json").read_text())
    meta, rows = result["meta"], result["rows"]
    planned = gpu.plan([MODEL], "rehearsal", part_s=PART_S)
    assert gpu.parts_of(planned) == [1, 2] and part1["meta"]["parts"] == [1] and meta["parts"] == [2]
    # the second run merged the first one's rows (each once) and measured the latency its plan chose
    assert [r for r in rows if r.get("gpu_part") == 1] == part1["rows"]
    assert {r.get("gpu_part") for r in rows} == {1, 2}
    measured = {(r["backend"], r["mode"], r["dtype"]) for r in rows if r["status"] == schema.STATUS_OK}
    for r in planned:
        if not r.chosen_at_run_time:
            assert (r.backend, r.mode, r.dtype) in measured, (r, [x["error"] for x in rows if x["status"] != "ok"])
    assert all(r["status"] == schema.STATUS_OK for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert len({(r["backend"], r["mode"], r["dtype"]) for r in rows}) == len(rows)
    assert {r["img_size"] for r in rows} == {gpu.toy_size(MODEL)}
    assert next(r for r in rows if r["backend"] == "keras-torch-jit")["compiler"].startswith(f"torch.compile {COMPILE_BACKEND}")
    # the latency of the model's fastest two paths by inference throughput, p50 <= p90 <= p99 at batch 1
    assert set(gpu.fastest_paths(rows, MODEL)) <= {r["backend"] for r in rows if r["mode"] == "latency"}
    for r in rows:
        if r["mode"] == "latency":
            assert r["batch"] == 1 and r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
    # two workers side by side in part 1: their timed loops never overlapped (what they overlapped of the others'
    # compilations is measured); the parity run's eval rows passed, and the second run carries them
    assert part1["meta"]["settings"]["side_by_side"] == 2 and part1["meta"]["timing_overlaps"] == []
    assert meta["timing_overlaps"] == []
    assert meta["parity"]["rows"] == 2 and meta["parity"]["passed"] == 2, meta["parity"]
    # the profiles: the torch target's row and the keras-jax training row where they were measured (the rehearsal
    # profiles the latter whether or not it missed)
    profile = (first / "profile.md").read_text()
    assert profile.count("| total ms | calls | share |") == 2, profile[:2000]
    assert "alexnet torch-compile train bfloat16" in profile and "alexnet keras-jax train bfloat16" in profile
    markdown = (rest / "gpu.md").read_text()
    assert "## train · bfloat16" in markdown and "## batch-1 latency" in markdown and "## GPU parity" in markdown
    assert (first / "plan.txt").read_text().splitlines()[-1].startswith("estimated wall time: ")


def test_without_keras_the_gpu_run_installs_the_carried_wheels_or_says_how_to_get_them(tmp_path, monkeypatch):
    """The GPU machine's image has no keras: `ensure_keras` installs the wheels brought along (`make
    bench-gpu-wheels`), and without them stops with what to run, before any worker starts."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "keras" else real(name, *a))
    with pytest.raises(SystemExit, match="make bench-gpu-wheels"):
        gpu.ensure_keras(str(tmp_path))
    calls = []
    monkeypatch.setattr(gpu.subprocess, "run", lambda command, **kw: calls.append(command))
    monkeypatch.setattr(gpu.sys, "path", list(gpu.sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    (tmp_path / "keras-3.15.1-py3-none-any.whl").write_bytes(b"")
    gpu.ensure_keras(str(tmp_path))
    (command,) = calls
    assert command[1:4] == ["-m", "pip", "install"] and "--no-index" in command and "--no-deps" in command
    assert command[-1].endswith("keras-3.15.1-py3-none-any.whl")
    target = command[command.index("--target") + 1]
    assert gpu.os.environ["PYTHONPATH"].split(gpu.os.pathsep) == [target, "/elsewhere"] and gpu.sys.path[0] == target
