"""TensorFlow checkpoints of TF-slim networks (`twins.tf_checkpoint`), written here the way TF-slim and
the seed's training script write them: tf.compat.v1 graph mode, `get_variable` under the network's
variable scopes, a global step and optimiser slots, a `Saver`."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.conftest import BACKEND
from twins import checkpoints
from twins.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
# The full-size vgg19_slim tests run in the tensorflow pass (DESIGN.md test budget).
TENSORFLOW_PASS = pytest.mark.skipif(BACKEND != "tensorflow", reason="full-size vgg19_slim: tensorflow pass only")
SCOPE = "vgg_19"
BLOCKS = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4}  # convs per block


def vgg19_variables(widths=(64, 128, 256, 512, 512), hidden=4096, classes=1000, fc6_size=7):
    """`[(slim name, HWIO shape)]` of TF-slim's vgg_19; the defaults are the zoo file's real shapes."""
    out, channels = [], 3
    for block, width in zip(BLOCKS, widths):
        for i in range(1, BLOCKS[block] + 1):
            out.append((f"conv{block}/conv{block}_{i}", [3, 3, channels, width]))
            channels = width
    out += [("fc6", [fc6_size, fc6_size, channels, hidden]), ("fc7", [1, 1, hidden, hidden]),
            ("fc8", [1, 1, hidden, classes])]
    return [(f"{SCOPE}/{layer}/{leaf}", shape if leaf == "weights" else shape[-1:])
            for layer, shape in out for leaf in ("weights", "biases")]


def torch_key(name: str) -> str:
    return name[len(SCOPE) + 1:].replace("/weights", ".weight").replace("/biases", ".bias").replace("/", ".")


def value(index: int, shape) -> np.ndarray:
    """The random value of the index-th variable, regenerated rather than kept (the zoo-size file): He-scaled
    kernels and small biases, so that a network restored from them computes finite logits."""
    array = np.random.default_rng([7, index]).random(shape, dtype=np.float32)
    array -= 0.5
    array *= np.float32(np.sqrt(24.0 / np.prod(shape[:-1])) if len(shape) == 4 else 0.02)  # var 2/fan_in
    return array


def to_torch(array: np.ndarray) -> np.ndarray:
    return array.transpose(3, 2, 0, 1) if array.ndim == 4 else array


SMALL = vgg19_variables(widths=(2, 3, 4, 5, 6), hidden=7, classes=5, fc6_size=2)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def save_slim(tf, prefix, variables, *, optimizer=None, version=2, extra=()):
    """Write `variables` (`[(slim name, shape)]`, plus `extra` names with shape [3]) as a training run
    does, after one step of `optimizer` ("momentum" as in the seed, or "adam" with moving averages);
    returns `{name: the saved value}`."""
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        created = {}
        for index, (name, shape) in enumerate(list(variables) + [(n, [3]) for n in extra]):
            *scopes, leaf = name.split("/")
            with contextlib.ExitStack() as stack:
                for scope in scopes:
                    stack.enter_context(tf1.variable_scope(scope))
                created[name] = tf1.get_variable(leaf, initializer=value(index, shape))
        global_step = tf1.train.get_or_create_global_step()
        train = []
        if optimizer:
            loss = tf.add_n([tf.reduce_sum(tf.square(v)) for v in created.values()])
            opt = {"momentum": tf1.train.MomentumOptimizer(0.01, 0.9), "adam": tf1.train.AdamOptimizer(0.01)}
            train = [opt[optimizer].minimize(loss, global_step=global_step)]
            if optimizer == "adam":
                with tf.control_dependencies(train):
                    train = [tf1.train.ExponentialMovingAverage(0.99).apply(list(created.values()))]
        write_version = tf1.train.SaverDef.V1 if version == 1 else tf1.train.SaverDef.V2
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(train)
            tf1.train.Saver(write_version=write_version).save(sess, str(prefix), write_meta_graph=False)
            return sess.run(created)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_training_checkpoint_reads_as_the_twins_keys_in_torch_layout(tf, tmp_path, optimizer):
    saved = save_slim(tf, tmp_path / "model.ckpt-10", SMALL, optimizer=optimizer)
    reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-10"))
    bookkeeping = {"global_step", "vgg_19/fc8/weights/Momentum"} if optimizer == "momentum" else {
        "beta1_power", "beta2_power", "vgg_19/fc8/weights/Adam_1", "vgg_19/fc8/weights/ExponentialMovingAverage"}
    assert bookkeeping <= set(reader.get_variable_to_shape_map())
    state = checkpoints.read(tmp_path / "model.ckpt-10")
    assert sorted(state) == sorted(torch_key(name) for name, _ in SMALL)
    for name, shape in SMALL:
        got = state[torch_key(name)]
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, to_torch(saved[name])), name
    assert state["fc6.weight"].shape == (7, 6, 2, 2)  # HWIO [2,2,6,7] -> OIHW
    assert state["fc6.weight"][3, 1, 0, 1] == saved["vgg_19/fc6/weights"][0, 1, 1, 3]


def test_the_prefix_the_index_and_the_data_shard_all_name_the_checkpoint(tf, tmp_path):
    save_slim(tf, tmp_path / "vgg_19.ckpt", SMALL, optimizer="momentum")
    assert not (tmp_path / "vgg_19.ckpt").exists()
    by_prefix = checkpoints.read(tmp_path / "vgg_19.ckpt")
    for path in (str(tmp_path / "vgg_19.ckpt.index"), tmp_path / "vgg_19.ckpt.data-00000-of-00001"):
        state = checkpoints.read(path)
        assert state.keys() == by_prefix.keys()
        assert all(np.array_equal(state[k], by_prefix[k]) for k in state)


def test_the_zoo_files_single_file_format_reads(tf, tmp_path):
    """The model zoo's 2016 `vgg_19.ckpt` is one file in the V1 format, with `mean_rgb` and
    `global_step` beside the layers."""
    saved = save_slim(tf, tmp_path / "vgg_19.ckpt", SMALL, version=1, extra=("vgg_19/mean_rgb",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "vgg_19.ckpt"]
    state = checkpoints.read(tmp_path / "vgg_19.ckpt")
    assert sorted(state) == sorted(torch_key(name) for name, _ in SMALL)
    assert np.array_equal(state["conv1.conv1_1.weight"], to_torch(saved["vgg_19/conv1/conv1_1/weights"]))


def test_another_network_is_refused_naming_the_supported_ones(tf, tmp_path):
    names = [("resnet_v1_50/conv1/weights", [7, 7, 3, 4])]
    names += [(f"resnet_v1_50/conv1/BatchNorm/{leaf}", [4])
              for leaf in ("beta", "gamma", "moving_mean", "moving_variance")]
    names += [(f"resnet_v1_50/block1/unit_{u}/bottleneck_v1/conv{c}/weights", [1, 1, 4, 4])
              for u in (1, 2, 3) for c in (1, 2, 3)]
    names += [(f"resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/{leaf}", [4]) for leaf in ("beta", "gamma")]
    names += [(f"resnet_v1_50/logits/{leaf}", shape) for leaf, shape in (("weights", [1, 1, 4, 10]), ("biases", [10]))]
    assert len(names) == 18
    save_slim(tf, tmp_path / "resnet_v1_50.ckpt", names + [(f"resnet_v1_50/extra_{i}", [1]) for i in range(6)],
              optimizer="momentum")
    with pytest.raises(CheckpointError) as info:
        checkpoints.read(tmp_path / "resnet_v1_50.ckpt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'resnet_v1_50.ckpt'}: a TensorFlow checkpoint of no network")
    assert "supported TF-slim networks: vgg_19 (vgg19_slim)" in message
    assert "\n  resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/beta\n" in message
    assert "... and 4 more" in message  # 24 variables, 20 listed; the slots and global_step are not
    assert "Momentum" not in message and "global_step" not in message


def test_vgg19_variables_outside_the_rule_are_listed(tf, tmp_path):
    odd = [("vgg_19/conv1/conv1_1/BatchNorm/beta", [2]), ("vgg_19/fc9/weights", [1, 1, 5, 5]),
           ("resnet_v1_50/conv1/weights", [1, 1, 1, 1])]
    save_slim(tf, tmp_path / "mixed.ckpt", SMALL + odd, optimizer="momentum")
    with pytest.raises(CheckpointError) as info:
        checkpoints.read(tmp_path / "mixed.ckpt")
    message = str(info.value)
    assert "mixed.ckpt: a TensorFlow checkpoint of vgg_19 with variables that do not map to vgg19_slim" in message
    assert "not mapped (3):\n" in message
    assert message.endswith("\n".join(f"  {name}" for name, _ in sorted(odd)))


def test_without_tensorflow_the_error_says_to_install_the_extra(tmp_path, monkeypatch):
    (tmp_path / "vgg_19.ckpt.index").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(CheckpointError) as info:
        checkpoints.read(tmp_path / "vgg_19.ckpt")
    assert str(info.value) == (f"{tmp_path / 'vgg_19.ckpt'}: reading a TensorFlow checkpoint needs tensorflow; "
                               "install the extra: pip install 'twins[tensorflow]'")


def test_broken_and_unknown_files_are_refused_clearly(tf, tmp_path):
    save_slim(tf, tmp_path / "vgg_19.ckpt", SMALL)
    data = tmp_path / "vgg_19.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"could not read.*truncated or not a checkpoint.*"
                                              r"vgg_19/\S+ in \S+vgg_19.ckpt.data-00000-of-00001: "):
        checkpoints.read(tmp_path / "vgg_19.ckpt")
    index = tmp_path / "vgg_19.ckpt.index"
    index.write_bytes(index.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"could not read.*truncated or not a checkpoint.*vgg_19.ckpt.index: "):
        checkpoints.read(index)
    index.unlink()
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: \S+vgg_19.ckpt.index$"):
        checkpoints.read(data)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint format '.ckpt'.*\.npz, or a TensorFlow"):
        checkpoints.read(tmp_path / "notes.ckpt")


# ----------------------------------------------------------------------------------------------
# The acceptance test: the zoo's vgg_19 (1000 classes, real shapes) restored into the
# 101-class twins with fc8 left fresh, every other tensor bit-exact.

ZOO = vgg19_variables()


def write_zoo(prefix: str) -> None:
    """Write the full-size checkpoint with the variables of the zoo's file (`mean_rgb`, `global_step`
    included). `SaveV2` is the op a `Saver` runs, fed directly: ~0.6 GB less than through a session's
    variables; the tests above write through a `Saver`."""
    import tensorflow as tf

    names = [name for name, _ in ZOO] + ["vgg_19/mean_rgb", "global_step"]
    tensors = [tf.constant(value(index, shape)) for index, (_, shape) in enumerate(ZOO)]
    tensors += [tf.constant([123.68, 116.78, 103.94]), tf.constant(0, tf.int64)]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


@pytest.fixture(scope="session")
def zoo_checkpoint(tmp_path_factory):
    """A full-size TF-slim vgg_19 checkpoint (~575 MB); values are `value(index, shape)`. Written in a
    subprocess: tensorflow keeps the heap of what it wrote after it is freed (~1.4 GB through a
    Saver), and the pytest process lives on for the rest of the suite. Session-scoped: its users run at
    two points of the suite (`conftest.pytest_collection_modifyitems`)."""
    pytest.importorskip("tensorflow")
    prefix = tmp_path_factory.mktemp("zoo") / "vgg_19.ckpt"
    code = f"from parity_tests.test_tf_checkpoint import write_zoo; write_zoo({str(prefix)!r})"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    yield prefix
    for path in prefix.parent.iterdir():  # pytest keeps the last three runs' temporary folders
        path.unlink()


def assert_restored(ours: dict[str, np.ndarray], fresh_fc8: np.ndarray):
    for index, (name, shape) in enumerate(ZOO):
        key = torch_key(name)
        if key.startswith("fc8."):
            continue
        assert np.array_equal(ours[key], to_torch(value(index, shape))), key
    assert ours["fc8.weight"].shape == (101, 4096, 1, 1) and np.array_equal(ours["fc8.weight"], fresh_fc8)


def test_the_zoo_vgg19_restores_into_the_torch_twin_but_fc8(zoo_checkpoint):
    import torch_impl
    from torch_impl.weights import load_state_dict

    state = checkpoints.read(zoo_checkpoint)
    assert len(state) == 38 and state["fc8.weight"].shape == (1000, 4096, 1, 1)
    model = torch_impl.build("vgg19_slim", num_classes=101)
    fresh = model.fc8.weight.detach().numpy().copy()
    report = load_state_dict(model, state, exclude=("fc8",), strict=True)
    del state
    assert sorted(report.skipped) == ["fc8.bias", "fc8.weight"] and len(report.loaded) == 36
    assert_restored({k: v.numpy() for k, v in model.state_dict().items()}, fresh)


@pytest.mark.keras
@TENSORFLOW_PASS  # the bridge's loading is numpy and `assign`, tested on every backend by test_bridge.py
def test_the_zoo_vgg19_restores_into_the_keras_twin_but_fc8(zoo_checkpoint):
    import keras

    import keras_impl
    from keras_impl.weights import load_torch_state_dict, torch_state_dict

    state = checkpoints.read(zoo_checkpoint)
    model = keras_impl.build("vgg19_slim", num_classes=101)
    fresh = to_torch(keras.ops.convert_to_numpy(model.get_layer("fc8").kernel))
    report = load_torch_state_dict(model, state, exclude=("fc8",), strict=True)
    del state
    assert sorted(report.skipped) == ["fc8.bias", "fc8.weight"] and len(report.loaded) == 36
    assert_restored(torch_state_dict(model), fresh)


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    from twins.shapes import make_food101

    return make_food101(tmp_path_factory.mktemp("food"), train=1, test=1, size=48, seed=2)


@pytest.mark.parametrize("framework", ["torch", pytest.param("keras", marks=pytest.mark.keras)],
                         ids=["torch", f"keras-{BACKEND}"])
@TENSORFLOW_PASS
@pytest.mark.heavy
def test_vgg19_slim_fine_tunes_from_the_slim_checkpoint_on_food101(zoo_checkpoint, food, tmp_path, framework):
    """The seed's job end to end on a generated Food-101 folder: `twins train vgg19_slim` from the
    1000-class slim checkpoint (fc8 fresh for 2 classes) for an epoch of two steps, then `twins predict` in the
    other framework prints top-k names. In the tensorflow pass (143 M parameters at 224x224). A run killed and
    resumed from its --weights is test_train.py's squeezenet1_0 test, on every backend: here a resume point
    (weights and momentum) is 1.15 GB to write and read back."""
    from parity_tests.cli import twins_cli

    run = tmp_path / "run"
    done = twins_cli("train", "vgg19_slim", "--framework", framework, "--data", str(food), "--out", str(run),
                     "--weights", str(zoo_checkpoint), "--epochs", "1", "--batch-size", "1", "--val-batch-size", "2",
                     "--log-every", "1", "--val-every", "0", "--workers", "0", lean=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "has 1000 classes, the data 2: the classifier (fc8) starts fresh" in done.stdout
    assert "loaded 36, skipped 2, missing 0, unexpected 0, mismatched 0" in done.stdout
    assert ("SGD lr 0.001 -> 1e-07 (linear decay) momentum 0.9, L2 0.0005 on conv kernels; 2 steps per epoch"
            in done.stdout)
    history = json.loads((run / "history.json").read_text())
    train = history["epochs"][0]["train"]
    assert len(train["step_losses"]) == 2 and train["step_lrs"] == [np.float32(1e-3), np.float32(0.5e-3 + 0.5e-7)]
    assert history["evals"] == []  # --val-every 0: the epoch-end val only
    assert history["epochs"][0]["val"]["samples"] == 2 and np.isfinite(train["step_losses"]).all()
    assert (run / "classes.txt").read_text() == "disc\nsquare\n"
    other = "keras" if framework == "torch" else "torch"
    images = sorted((food / "images").rglob("*.jpg"))
    predicted = twins_cli("predict", "vgg19_slim", "--framework", other, "--backend", "tensorflow", "--weights",
                          str(run / "best.safetensors"), "--classes", str(run / "classes.txt"), "--top-k", "2",
                          *map(str, images), lean=True)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    lines = [line for line in predicted.stdout.splitlines() if line.startswith(str(images[0].parent.parent))]
    assert len(lines) == len(images) == 4
    for line in lines:
        names = re.findall(r"(disc|square) (\d\.\d{3})", line)
        assert sorted(n for n, _ in names) == ["disc", "square"]
        assert sum(float(p) for _, p in names) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.heavy
def test_twins_convert_turns_the_slim_checkpoint_into_a_torch_layout_file(zoo_checkpoint, tmp_path):
    from parity_tests.cli import twins_cli

    out = tmp_path / "vgg19-food.safetensors"
    done = twins_cli("convert", str(zoo_checkpoint), str(out), "--model", "vgg19_slim", "--num-classes", "101",
                     lean=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded 36, skipped 2" in done.stdout and "fresh: fc8.weight, fc8.bias" in done.stdout
    state = checkpoints.read(out)
    assert state["fc8.weight"].shape == (101, 4096, 1, 1)
    assert np.array_equal(state["conv1.conv1_1.weight"], to_torch(value(0, ZOO[0][1])))
    wrong = twins_cli("convert", str(tmp_path / "missing.ckpt"), str(out), "--model", "vgg19_slim")
    assert wrong.returncode != 0 and "source not found" in wrong.stderr and "missing.ckpt.index" in wrong.stderr
    with pytest.raises(FileNotFoundError, match=r"missing.ckpt \(nor missing.ckpt.index"):
        checkpoints.read(tmp_path / "missing.ckpt")
