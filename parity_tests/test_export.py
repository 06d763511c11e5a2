"""Deployment exports (`twins export`, the parity engine's `export_*` rows): every artifact reloaded in its
own runtime computes what its eager twin does, at batch 3 and batch 1; a pair Keras cannot export here says
why (and `twins.exports.KERAS_LIMITS` names exactly those pairs); the comparison is shown to catch a tampered
artifact and a batch size baked in; the files appear atomically; the command's errors say what was expected."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.conftest import BACKEND, model_params
from twins import exports
from parity_tests.workers import KERAS_EXPORTED, TORCH_EXPORTED
from twins_cli.parity import EXPORT_CHECKS, TORCH_EXPORT_CHECKS, TORCH_TWIN, export_format

ROOT = Path(__file__).resolve().parent.parent


def export_rows(worker, models: tuple[str, ...]) -> dict:
    """`{(model, check): row}` of the export jobs of the session's parity workers (`parity_tests/workers.py`)."""
    rows = [row for model in models for row in worker.model_rows(model, exports=True)]
    crashed = [r for r in rows if r["check"] == "run"]
    assert not crashed, crashed[0]["detail"]
    return {(r["model"], r["check"]): r for r in rows}


@pytest.mark.keras
@model_params(list(KERAS_EXPORTED))
def test_keras_exports_match_the_eager_twin_or_say_why(model_name, parity_worker):
    rows = export_rows(parity_worker, KERAS_EXPORTED)
    assert {check for model, check in rows if model == model_name} == set(EXPORT_CHECKS)
    for check in EXPORT_CHECKS:
        row = rows[(model_name, check)]
        why = exports.limit(BACKEND, export_format(check, "keras"))
        if why:  # the table must still be true: this pair still fails, and says the table's reason
            assert not row["supported"] and not row["passed"], f"{check} on {BACKEND} now exports: {row['detail']}"
            assert why in row["detail"] and "raised" in row["detail"]
        else:
            assert row["supported"], row["detail"]
            assert row["passed"], f"{model_name} {check} on {BACKEND}: {row['error']} > {row['bound']}; {row['detail']}"
            assert row["bound"] == 1e-5 and "batch 3" in row["detail"] and "batch 1" in row["detail"]


@model_params(list(TORCH_EXPORTED))
def test_torch_twin_exports_match_the_eager_twin(model_name, torch_export_worker):
    rows = export_rows(torch_export_worker, TORCH_EXPORTED)
    for check in TORCH_EXPORT_CHECKS:
        row = rows[(model_name, check)]
        assert row["backend"] == TORCH_TWIN and row["supported"]
        assert row["passed"], f"{model_name} {check}: {row['error']} > {row['bound']}; {row['detail']}"
    assert "onnxruntime" in rows[(model_name, "export_onnx")]["detail"]
    assert "torch" in rows[(model_name, "export_pt2")]["detail"]


# ----------------------------------------------------------------------------------------------
# The comparison, shown failing


@pytest.fixture(scope="module")
def small_twin():
    import torch

    import torch_impl

    torch.manual_seed(0)
    return torch_impl.build("resnet18", num_classes=10).eval()


def torch_side():
    from twins_cli.train import Side

    return Side("torch")


def test_a_tampered_onnx_artifact_fails_the_check(small_twin, tmp_path):
    import onnx
    from onnx import numpy_helper

    from twins_cli.export import export_twin, verify

    path = tmp_path / "r18.onnx"
    export_twin(torch_side(), small_twin, "onnx", path, 32)
    assert verify(torch_side(), small_twin, "onnx", path, 32)["passed"]
    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(biggest) * np.float32(1.001)  # one layer's weights 0.1% off
    biggest.CopyFrom(numpy_helper.from_array(w, biggest.name))
    onnx.save(proto, str(path))
    result = verify(torch_side(), small_twin, "onnx", path, 32)
    assert not result["passed"] and result["error"] > exports.BOUND


def test_a_batch_size_baked_into_the_artifact_is_refused(small_twin, tmp_path):
    import torch

    from twins_cli.export import verify

    path = tmp_path / "static.onnx"  # no dynamic_shapes: the example's batch of 2 becomes part of the graph
    torch.onnx.export(small_twin, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=True, external_data=False)
    with pytest.raises(exports.ExportError, match="onnxruntime refused a batch of 3"):
        verify(torch_side(), small_twin, "onnx", path, 32)


def test_the_separable_resamplers_convert_to_litert_with_a_free_batch(tmp_path):
    """torch's adaptive pooling and align-corners resize in the Keras twins (vgg11_bn's classifier, pspnet's
    pyramid) as LiteRT runs them: once einsums, whose conversion left shapes with a -1 that the interpreter
    refused ("BytesRequired number of elements overflowed"); now two matrix products
    (`keras_impl.common.apply_separable`). The artifact gives Keras' outputs at batches 3 and 1. Tensorflow
    pass: LiteRT converts from tensorflow only."""
    import keras

    from keras_impl.common import AdaptiveAveragePool, AlignCornersResize

    inputs = keras.Input((9, 7, 4))
    pooled = AdaptiveAveragePool((3, 2))(inputs)
    model = keras.Model(inputs, [pooled, AlignCornersResize()([pooled, inputs]), AlignCornersResize(zoom=2)(inputs)])
    path = tmp_path / "resample.tflite"
    model.export(str(path), format="litert", verbose=False,
                 input_signature=[keras.InputSpec(shape=(None, 9, 7, 4), dtype="float32")])
    runtime = exports.open_runtime("litert", path)
    rng = np.random.RandomState(0)
    result = exports.compare(runtime, lambda x: [np.asarray(y) for y in model.predict_on_batch(x)],
                             [rng.randn(b, 9, 7, 4).astype(np.float32) for b in exports.CHECK_BATCHES])
    assert result["error"] < exports.BOUND, result


def test_the_comparison_refuses_other_outputs_and_counts_nan_as_inf():
    runtime = exports.Runtime("fake", "0", lambda x: [np.zeros((len(x), 4), np.float32)], 0.0)
    batches = exports.check_batches(8, "NHWC")
    with pytest.raises(exports.ExportError, match="returned 1 output"):
        exports.compare(runtime, lambda x: [np.zeros((len(x), 4)), np.zeros((len(x), 2))], batches)
    with pytest.raises(exports.ExportError, match=r"returned shape \(3, 4\).*\(3, 5\)"):
        exports.compare(runtime, lambda x: [np.zeros((len(x), 5))], batches)
    nan = exports.Runtime("fake", "0", lambda x: [np.full((len(x), 4), np.nan, np.float32)], 0.0)
    assert exports.compare(nan, lambda x: [np.ones((len(x), 4))], batches)["error"] == float("inf")
    same = exports.compare(runtime, lambda x: [np.zeros((len(x), 4))], batches)
    assert same["error"] == 0.0 and sorted(same["per_batch"]) == [1, 3]


def test_collecting_cycles_frees_cyclic_garbage_the_collector_would_leave():
    """What bounds tf2onnx's memory (`keras_impl.export.collecting_cycles`): garbage in reference cycles is freed
    while the block runs, with Python's automatic collection off (which counts objects, not the bytes they hold)."""
    import gc
    import time
    import weakref

    from keras_impl.export import collecting_cycles

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other, a.payload = b, a, np.zeros(1000)
        return weakref.ref(a)

    was_enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        left = cycle()
        time.sleep(0.1)
        assert left() is not None  # the control: nothing collects it on its own
        with collecting_cycles(interval=0.02):
            freed = cycle()
            deadline = time.monotonic() + 5
            while freed() is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert freed() is None
        assert gc.get_freeze_count() == frozen  # what the process froze (its imports) stays frozen
    finally:
        gc.collect()
        if was_enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------------
# Files


def test_an_artifact_appears_whole_or_not_at_all(tmp_path):
    def fails(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter died")

    with pytest.raises(RuntimeError, match="exporter died"):
        exports.write_artifact(tmp_path / "m.onnx", fails)
    assert list(tmp_path.iterdir()) == []

    order = []

    def pair(tmp):  # OpenVINO: the .xml names its .bin
        tmp.write_text("<xml/>")
        tmp.with_suffix(".bin").write_bytes(b"weights")

    real_replace = os.replace
    try:
        os.replace = lambda a, b: (order.append(Path(b).name), real_replace(a, b))[1]
        exports.write_artifact(tmp_path / "m.xml", pair)
    finally:
        os.replace = real_replace
    assert order == ["m.bin", "m.xml"]  # the companion first, the file a reader opens last
    assert [p.name for p in exports.artifact_files(tmp_path / "m.xml")] == ["m.xml", "m.bin"]

    def folder(tmp, payload):
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text(payload)

    exports.write_artifact(tmp_path / "sm", lambda tmp: folder(tmp, "old"))
    (tmp_path / "sm" / "stale").write_text("from the old export")
    exports.write_artifact(tmp_path / "sm", lambda tmp: folder(tmp, "new"))
    assert sorted(p.name for p in (tmp_path / "sm").iterdir()) == ["saved_model.pb"]  # replaced whole
    assert (tmp_path / "sm" / "saved_model.pb").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "sm"]  # no temporary left

    with pytest.raises(exports.ExportError, match="wrote no m.onnx"):
        exports.write_artifact(tmp_path / "m.onnx", lambda tmp: tmp.with_name("other.onnx").write_text("x"))


# ----------------------------------------------------------------------------------------------
# The command


def twins(*args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "twins_cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_twins_export_writes_checks_and_reports_a_trained_checkpoint(tmp_path):
    import torch

    import torch_impl
    from twins import checkpoints
    from torch_impl.weights import state_dict_numpy

    torch.manual_seed(1)
    trained = torch_impl.build("resnet18", num_classes=5).eval()
    checkpoints.write(tmp_path / "five.safetensors", state_dict_numpy(trained))
    out = tmp_path / "five.pt2"
    proc = twins("export", "resnet18", "--framework", "torch", "--format", "pt2", "--out", str(out), "--img-size", "32",
                 "--weights", str(tmp_path / "five.safetensors"), "--json", str(tmp_path / "five.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "export parity against the eager torch twin: torch" in proc.stdout and ": ok" in proc.stdout
    report = json.loads((tmp_path / "five.json").read_text())
    assert report["check"]["passed"] and report["bytes"] == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["five.json", "five.pt2", "five.safetensors"]
    program = torch.export.load(str(out)).module()  # the checkpoint's weights, not the seed's
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(program(x).numpy(), trained(x).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--framework", "torch", "--format", "tflite", "--out", "m.tflite"],
     "the torch twin has no export format 'tflite'; expected one of pt2, onnx"),
    (["--framework", "torch", "--format", "pt2", "--out", "m.onnx"],
     "--format pt2 writes a .pt2 file; got --out m.onnx"),
    (["--framework", "keras", "--format", "tf_saved_model", "--out", "m.onnx"], "writes a folder"),
    (["--framework", "torch", "--format", "onnx", "--out", "no/such/folder/m.onnx"], "does not exist"),
    (["--framework", "torch", "--format", "onnx", "--out", "m.onnx", "--backend", "jax"], "the torch twin has none"),
    (["--framework", "torch", "--format", "onnx", "--out", "m.onnx", "--img-size", "16"],
     "below resnet18's smallest input size"),
])
def test_twins_export_errors_say_what_was_expected(args, message, tmp_path):
    from parity_tests.cli import refused

    args = [a if not a.startswith(("m.", "no/")) else str(tmp_path / a) for a in args]
    proc = refused("export", "resnet18", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr.replace(str(tmp_path) + "/", ""), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_twins_export_refuses_a_pair_keras_cannot_export_with_the_reason(tmp_path):
    proc = twins("export", "resnet18", "--framework", "keras", "--backend", "jax", "--format", "litert",
                 "--out", str(tmp_path / "m.tflite"), "--img-size", "32", timeout=300)
    assert proc.returncode == 2
    assert exports.limit("jax", "litert") in proc.stderr and "Keras on jax raised ValueError" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_twins_export_removes_an_artifact_that_fails_its_check(tmp_path, monkeypatch, capsys):
    """The command's own failure path: an artifact whose check fails (here a runtime that returns the eager
    outputs off by 1e-3) is removed, the exit status is 1 and the report says why."""
    import argparse

    from twins_cli import export

    real_open = exports.open_runtime

    def off(fmt, path, **kw):
        runtime = real_open(fmt, path, **kw)
        return exports.Runtime(runtime.name, runtime.version, lambda x: [y * 1.001 for y in runtime.run(x)], 0.0)

    monkeypatch.setattr(exports, "open_runtime", off)
    args = argparse.Namespace(model="resnet18", framework="torch", backend=None, format="onnx",
                              out=str(tmp_path / "m.onnx"), weights=None, img_size=32, seed=0, no_check=False,
                              json=str(tmp_path / "m.json"))
    assert export.cmd_export(args) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    report = json.loads((tmp_path / "m.json").read_text())
    assert not report["check"]["passed"] and report["check"]["error"] > exports.BOUND
    assert "does not compute what the eager twin does; removing it" in capsys.readouterr().err
