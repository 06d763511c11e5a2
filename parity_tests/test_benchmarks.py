"""The benchmark harness (`benchmarks/`): a tiny real run through `benchmarks.run` (native torch and
the Keras twin on the current KERAS_BACKEND, resnet18, batch 1, 32x32, inference) checks that the
JSON, Markdown and PNG files are written and parse, that the Markdown cells carry the JSON's figures
and that every row carries every column; hand-made rows check that each ratio divides by the torch row
of its own configuration. Then the ways a request or a backend can fail: an unknown backend or model
is a clear ValueError, zero warm-up steps are refused, and a backend that cannot run (no GPU, a worker
past its time limit) is a row that says why instead of a missing row.

Worker processes import their frameworks afresh, so each `benchmarks.run` costs a few seconds; the
module stays well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import benchmarks
from benchmarks import harness, schema
from twins import checkpoints
from twins import registry

pytestmark = pytest.mark.keras

KERAS_BACKEND = "keras-" + os.environ.get("KERAS_BACKEND", "tensorflow")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests that run no Keras backend (native torch, the export runtimes, the harness's own logic) compute the same
# thing in every pass: they run in the tensorflow pass only.
ONCE = pytest.mark.skipif(KERAS_BACKEND != "keras-tensorflow",
                          reason="no Keras backend involved: runs in the tensorflow pass")
TINY = dict(models=["resnet18"], modes=["infer"], batch_sizes=[1], img_size=32, warmup=1, repeats=2, verbose=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    result = benchmarks.run(
        backends=["torch", KERAS_BACKEND], device="cpu", out_dir=str(out_dir), timeout_s=300, side_by_side=2, **TINY
    )
    return result, out_dir


def test_writes_json_markdown_and_png(tiny_run):
    result, out_dir = tiny_run
    with open(out_dir / "benchmark.json") as f:
        saved = json.load(f)
    assert saved["rows"] == result["rows"]
    meta = saved["meta"]
    for key in ("date", "hostname", "device", "device_name", "cpu_model", "python", "versions", "tf32", "options"):
        assert key in meta, key
    assert meta["tf32"] is False and meta["device"] == "cpu"
    assert meta["options"]["repeats"] == 2 and meta["options"]["warmup"] == 1

    markdown = (out_dir / "benchmark.md").read_text()
    assert "## resnet18 · infer" in markdown
    # Each measured row appears with its own figures, formatted from the JSON.
    for row in saved["rows"]:
        line = next(l for l in markdown.splitlines() if l.startswith(f"| {row['backend']} | 1 | 32 |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3].replace(",", "")) == pytest.approx(row["samples_per_sec"], rel=5e-3)
        assert float(cells[4].replace(",", "")) == pytest.approx(row["step_ms_median"], rel=5e-3)
        assert cells[7] == f"{row['ratio_to_torch']:.2f}" and cells[-1] == "ok"

    from matplotlib.image import imread

    image = imread(out_dir / "benchmark.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    # Atomic writes leave no temporary files behind (`temp_files` is shown to find one in test_checkpoints).
    assert checkpoints.temp_files(out_dir) == []


def test_rows_carry_every_column_and_measurements(tiny_run):
    result, _ = tiny_run
    rows = result["rows"]
    assert [r["backend"] for r in rows] == ["torch", KERAS_BACKEND]
    for row in rows:
        assert list(row) == list(schema.COLUMNS), row
        assert row["status"] == "ok", row["error"]
        assert row["error"] is None
        assert (row["model"], row["mode"], row["batch"], row["img_size"]) == ("resnet18", "infer", 1, 32)
        assert row["device"] == "cpu" and row["dtype"] == "float32"
        assert row["warmup"] == 1 and row["steps_timed"] == 2
        assert 0 < row["step_ms_min"] <= row["step_ms_median"] <= row["step_ms_max"]
        assert row["samples_per_sec"] == pytest.approx(1 / (row["step_ms_median"] / 1e3))
        assert row["peak_mem_mb"] > 0 and row["peak_mem_source"].startswith("cpu:")
        # The twins have the same trainable parameters (torchvision resnet18: 11,689,512).
        assert row["params_m"] == pytest.approx(11.689512)


def test_the_workers_prepare_side_by_side_and_time_alone(tiny_run):
    """Two workers alive at a time (`side_by_side=2`, as `make demo` runs them); each held the run's gate exclusively for its timed steps, and
    what they recorded shows no timed step overlapping the other worker's hold (`gate.overlaps`, shown to find
    one in `test_the_gate_keeps_timed_steps_apart`)."""
    result, _ = tiny_run
    meta = result["meta"]
    assert meta["options"]["side_by_side"] == 2 and meta["timing_overlaps"] == []
    for info in meta["workers"]:
        modes = [mode for mode, _, _ in info["gate"]]
        assert modes[0] == "shared" and modes.count("exclusive") == 1, info["gate"]  # one row, one timed loop
    first, second = meta["workers"]
    # side by side: the second worker held the gate before the first was done with it
    assert second["gate"][0][1] < first["gate"][-1][2]


GATE_HOLDER = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("gate", "benchmarks/gate.py")  # not the package: a fast start
gate_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate_module)
Gate = gate_module.Gate

def busy(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

gate = Gate(None if sys.argv[1] == "none" else sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both start together, however long their imports took
gate.shared()
busy(0.4)
with gate.timed():
    busy(0.3)
busy(0.2)
gate.release()
print(json.dumps(gate.intervals))
"""


@ONCE
def test_the_gate_keeps_timed_steps_apart(tmp_path):
    """Two processes that prepare, time and prepare again, started together: through one gate file no timed
    section overlaps the other process's holds (one waited for the other); with no gate they overlap, and
    `gate.overlaps` says so."""
    from benchmarks.gate import overlaps

    def together(path):
        start = str(time.time() + 1.5)
        procs = [subprocess.Popen([sys.executable, "-c", GATE_HOLDER, path, start], cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        return {f"p{i}": json.loads(p.communicate(timeout=60)[0]) for i, p in enumerate(procs)}

    gated = together(str(tmp_path / "gate"))
    assert overlaps(gated) == []
    timed = sorted((start, end) for held in gated.values() for mode, start, end in held if mode == "exclusive")
    assert len(timed) == 2 and timed[0][1] <= timed[1][0]
    problems = overlaps(together("none"))
    assert problems and "timed steps" in problems[0] and "overlap" in problems[0]


@ONCE
def test_ratios_divide_by_the_torch_row_of_the_same_configuration():
    """Hand-made rows: two torch rows that differ only in batch (or dtype), a Keras row and a peer row for
    each; every ratio must use the torch row of its own model/mode/batch/dtype/size."""
    def row(backend, batch, sps, dtype="float32", model="resnet50", peer_of=None, status="ok"):
        return {"model": model, "peer_of": peer_of, "backend": backend, "mode": "train", "batch": batch,
                "dtype": dtype, "img_size": 224, "samples_per_sec": sps, "status": status}

    rows = [row("torch", 8, 100.0), row("torch", 64, 400.0), row("torch", 8, 250.0, dtype="bfloat16"),
            row("keras-jax", 8, 80.0), row("keras-jax", 64, 200.0), row("keras-jax", 8, 50.0, dtype="bfloat16"),
            row("keras-jax", 64, 300.0, model="ResNet50", peer_of="resnet50"),
            row("keras-torch", 64, None, status="timeout"), row("keras-tensorflow", 32, 10.0)]
    harness.add_ratios(rows)
    assert [r["ratio_to_torch"] for r in rows] == [1.0, 1.0, 1.0, 0.8, 0.5, 0.2, 0.75, None, None]


@ONCE
def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown backend 'keras-mxnet'.*torch, torch-compile, keras-tensorflow"):
        benchmarks.run(backends=["torch", "keras-mxnet"], device="cpu", **TINY)


@ONCE
def test_unknown_model_is_a_clear_error():
    with pytest.raises(registry.UnknownModelError, match=r"unknown model name 'resnet19'.*resnet18"):
        benchmarks.run(backends=["torch"], device="cpu", **{**TINY, "models": ["resnet19"]})


@ONCE
def test_warmup_zero_is_refused():
    """Warm-up is excluded from the timings, and the first step compiles: zero warm-up steps would put
    the compile into the median."""
    with pytest.raises(ValueError, match=r"warmup: expected an integer >= 1, got 0"):
        benchmarks.run(backends=["torch"], device="cpu", **{**TINY, "warmup": 0})


@ONCE
def test_command_line_rejects_an_unknown_backend():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--backends", "torch,bogus"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "unknown backend 'bogus'" in done.stderr


@ONCE
def test_backend_without_a_gpu_says_so_in_its_row(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible; this test needs a machine without one")
    result = benchmarks.run(backends=["torch"], device="cuda", out_dir=str(tmp_path), timeout_s=120, **TINY)
    (row,) = result["rows"]
    assert row["status"] == schema.STATUS_NO_GPU
    assert "--device cuda" in row["error"] and "torch.cuda.is_available() is False" in row["error"]
    assert row["samples_per_sec"] is None and row["ratio_to_torch"] is None
    assert list(row) == list(schema.COLUMNS)
    # The failed row is reported, not dropped.
    assert "**no gpu**" in (tmp_path / "benchmark.md").read_text()
    assert (tmp_path / "benchmark.png").stat().st_size > 0


@ONCE
def test_a_pair_left_out_of_a_sweep_is_a_row_that_says_why(tmp_path):
    """`skip` (what `make demo`'s quick sweep does with torch-compile's training step): the pair's rows are
    written with status "not measured" and the reason, no worker starts for them, and a pair that names no
    backend or mode is refused."""
    why = "left out of this sweep: compiling takes long"
    result = benchmarks.run(backends=["torch-compile"], device="cpu", out_dir=str(tmp_path),
                            skip={("torch-compile", "infer"): why}, **TINY)
    (row,) = result["rows"]
    assert row["status"] == schema.STATUS_NOT_MEASURED and row["error"] == why and row["samples_per_sec"] is None
    assert list(row) == list(schema.COLUMNS)
    assert "**not measured**: left out of this sweep" in (tmp_path / "benchmark.md").read_text()
    assert not (tmp_path / "logs" / "torch-compile.log").exists()  # no worker ran
    with pytest.raises(ValueError, match=r"skip: \('torch-compile', 'fit'\) is not a \(backend, mode\) pair"):
        benchmarks.run(backends=["torch"], device="cpu", skip={("torch-compile", "fit"): why}, **TINY)


@ONCE
def test_torch_worker_imports_no_keras_and_the_harness_no_framework():
    script = (
        "import sys\n"
        "import benchmarks\n"
        "assert not {'torch', 'keras', 'tensorflow', 'jax'} & set(sys.modules), 'harness imported a framework'\n"
        "from benchmarks import worker\n"
        "options = dict(device='cpu', dtype='float32', warmup=0, repeats=1, channels_last=False, tf32=False)\n"
        "worker.make_runner('torch', options)\n"
        "assert 'torch' in sys.modules\n"
        "assert not {'keras', 'tensorflow', 'jax'} & set(sys.modules), sorted({'keras', 'tensorflow', 'jax'} & set(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@ONCE
def test_crashed_worker_yields_rows_with_its_output_tail(tmp_path):
    # A Python that cannot start (PYTHONHOME pointing nowhere) stands for a worker that dies early.
    options = {"device": "cpu", "dtype": "float32", "warmup": 1, "repeats": 2, "channels_last": False, "tf32": False}
    configs = [
        {"model": "resnet18", "backend": "torch", "mode": mode, "batch": 1, "img_size": 32, "peer_of": None}
        for mode in ("train", "infer")
    ]
    env = dict(os.environ, PYTHONHOME=str(tmp_path / "no-python-here"))
    rows, info, _ = harness.run_worker("torch", configs, options, env, 60, str(tmp_path), "torch", verbose=False)
    assert [r["mode"] for r in rows] == ["train", "infer"]
    for row in rows:
        assert row["status"] == schema.STATUS_CRASHED
        assert row["error"].startswith("the torch worker exited with code 1 before it measured this row")
        assert "encodings" in row["error"]  # the tail of the worker's own output
        assert list(row) == list(schema.COLUMNS)
    assert info["returncode"] == 1 and info["timed_out"] is False


@ONCE
def test_worker_past_its_time_limit_yields_a_timeout_row():
    result = benchmarks.run(backends=["torch"], device="cpu", timeout_s=0.5, **TINY)
    (row,) = result["rows"]
    assert row["status"] == schema.STATUS_TIMEOUT
    assert "ran past its 0.5 s limit" in row["error"]
    (worker,) = result["meta"]["workers"]
    assert worker["timed_out"] is True


def test_latency_mode_and_an_export_runtime(tmp_path):
    """Batch-1 latency percentiles from the timed calls, on native torch and on the torch twin's ONNX artifact in
    onnxruntime (exported and checked by `twins export` in a subprocess); the runtime's train row is a row that
    says why it does not apply."""
    if KERAS_BACKEND != "keras-tensorflow":
        pytest.skip("no Keras in these rows: the tensorflow pass runs them")
    result = benchmarks.run(backends=["torch", "onnxruntime"], device="cpu", models=["resnet18"], img_size=32,
                            modes=["train", "latency"], batch_sizes=[2], warmup=1, repeats=2, latency_calls=12,
                            out_dir=str(tmp_path), timeout_s=600, verbose=False)
    rows = {(r["backend"], r["mode"]): r for r in result["rows"]}
    assert rows[("onnxruntime", "train")]["status"] == schema.STATUS_NOT_APPLICABLE
    for backend in ("torch", "onnxruntime"):
        row = rows[(backend, "latency")]
        assert row["status"] == schema.STATUS_OK, row["error"]
        assert row["batch"] == 1 and row["steps_timed"] == 12
        assert row["latency_ms_p50"] == pytest.approx(row["step_ms_median"])
        assert row["step_ms_min"] <= row["latency_ms_p50"] <= row["latency_ms_p90"] <= row["latency_ms_p99"] \
            <= row["step_ms_max"]
    onnx = rows[("onnxruntime", "latency")]
    assert onnx["compiler"].startswith("onnxruntime") and 40 < onnx["artifact_mb"] < 50  # resnet18's 11.7 M floats
    assert onnx["export_error"] is not None and onnx["export_error"] <= 1e-5
    assert onnx["ratio_to_torch"] == pytest.approx(onnx["samples_per_sec"] / rows[("torch", "latency")]["samples_per_sec"])
    text = (tmp_path / "benchmark.md").read_text()
    assert "## resnet18 · latency" in text and "| p50 ms | p90 ms | p99 ms |" in text
    assert f"| {onnx['export_error']:.1e} |" in text


def test_an_artifact_made_beforehand_is_measured_and_a_failed_export_is_its_rows_error(tmp_path):
    """`run(artifacts=)`: the export runtimes measure the artifacts `prepare_exports` made (the report makes them
    beside its explain pages), and an export that failed there is the error of every row that needed it, not a
    silent second export."""
    if KERAS_BACKEND != "keras-tensorflow":
        pytest.skip("no Keras in these rows: the tensorflow pass runs them")
    assert harness.export_tasks("resnet18", "torch,onnxruntime", 32) == [("onnxruntime", "resnet18", 32)]
    broken = {"onnxruntime": {"resnet18-32": {"error": "twins export exited 1: broken on purpose"}}}
    result = benchmarks.run(backends=["onnxruntime"], device="cpu", models=["resnet18"], img_size=32,
                            modes=["infer", "latency"], batch_sizes=[2], warmup=1, repeats=2, latency_calls=10,
                            out_dir=None, timeout_s=600, verbose=False, artifacts=broken)
    assert [(r["mode"], r["status"]) for r in result["rows"]] == [("infer", schema.STATUS_ERROR),
                                                                   ("latency", schema.STATUS_ERROR)]
    assert all("broken on purpose" in r["error"] for r in result["rows"])


def test_an_artifact_the_parity_run_kept_is_measured_and_not_exported_again(tmp_path, monkeypatch):
    """`run_parity(keep_exports=)`, what `make demo` does: an export row within its bound leaves its artifact and
    its report where `prepare_exports` looks, under the benchmark's name for it, and the benchmark measures that
    artifact instead of exporting it again; a row whose check failed leaves nothing behind."""
    if KERAS_BACKEND != "keras-tensorflow":
        pytest.skip("no Keras in these rows: the tensorflow pass runs them")
    from twins_cli import export
    from twins_cli.parity.exports import KEEP_EXPORTS_ENV, run_torch_exports

    kept = tmp_path / "kept"
    monkeypatch.setenv(KEEP_EXPORTS_ENV, str(kept))
    (row,) = run_torch_exports("resnet18", size=32, checks=("export_onnx",))
    assert row.check == "export_onnx" and row.passed, row

    def export_again(*args):
        raise AssertionError(f"exported again: {args}")

    monkeypatch.setattr(harness.worker, "export_artifact", export_again)
    artifacts = harness.prepare_exports([("onnxruntime", "resnet18", 32)], str(kept), verbose=False)
    entry = artifacts["onnxruntime"]["resnet18-32"]
    assert entry["check"]["error"] == row.error and entry["framework"] == "torch" and os.path.isfile(entry["path"])
    result = benchmarks.run(backends=["onnxruntime"], device="cpu", models=["resnet18"], img_size=32,
                            modes=["infer"], batch_sizes=[2], warmup=1, repeats=2, out_dir=None, timeout_s=600,
                            verbose=False, artifacts=artifacts)
    (measured,) = result["rows"]
    assert measured["status"] == schema.STATUS_OK and measured["export_error"] == row.error, measured

    refused = tmp_path / "refused"
    monkeypatch.setenv(KEEP_EXPORTS_ENV, str(refused))
    monkeypatch.setattr(export, "verify", lambda *a, **k: {"error": 0.5, "passed": False, "per_batch": {3: 0.5, 1: 0.5},
                                                           "runtime": "onnxruntime (a check broken on purpose)"})
    (row,) = run_torch_exports("resnet18", size=32, checks=("export_onnx",))
    assert not row.passed and row.error == 0.5
    assert list(refused.iterdir()) == []


@ONCE
def test_percentiles_interpolate_as_numpy_does():
    import numpy as np

    from benchmarks.worker import percentile

    times = list(np.random.default_rng(0).gamma(2.0, 10.0, size=37))
    for q in (50, 90, 99):
        assert percentile(times, q) == pytest.approx(np.percentile(times, q))
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0 and percentile([2.0, 1.0], 50) == 1.5 and percentile([], 50) is None


@ONCE
def test_backend_groups_expand():
    assert harness.resolve_backends("all") == list(schema.DEFAULT_BACKENDS)
    assert harness.resolve_backends("torch,deploy") == ["torch", *schema.EXPORT_BACKENDS]
    with pytest.raises(ValueError, match=r"unknown backend 'onnx'.*'deploy' for the export runtimes"):
        harness.resolve_backends("onnx")


@ONCE
def test_a_contended_run_is_recorded_by_the_rule_the_report_reads(monkeypatch):
    """The harness's load warning and the report's marks on a contended run (`twins_cli.report.deployment_table`)
    come from one rule, `schema.contended`, on what the run recorded in its meta. A run whose every row is n/a (the
    export runtimes do not train) starts no worker: it takes a moment."""
    from twins_cli.report import deployment_table

    rows = [{"model": "resnet18", "backend": backend, "mode": "infer", "batch": 32, "device": "cpu",
             "dtype": "float32", "status": "ok", "samples_per_sec": sps, "ratio_to_torch": ratio, "compiler": None,
             "export_error": None, "peer_of": None} for backend, sps, ratio in (("torch", 10.0, 1.0),
                                                                                 ("onnxruntime", 25.0, 2.5))]
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 2)
    for load, contended in ((4.27, True), (1.5, True), (1.0, False), (0.2, False)):
        monkeypatch.setattr(harness.os, "getloadavg", lambda load=load: (load, load, load))
        meta = benchmarks.run(backends=["litert"], device="cpu", models=["resnet18"], modes=["train"], img_size=32,
                              batch_sizes=[1], verbose=False)["meta"]
        assert meta["load_average_before"][0] == load and meta["cpu_count"] == 2
        assert bool(meta["load_warning"]) is contended
        assert (schema.contention(meta) is not None) is contended
        assert (f"2.50x (contended run: load {load:.2f} on 2 CPUs)" in deployment_table(rows, None, meta)) is contended
