"""The Keras side of the weight bridge: strict errors, exclude, formats, the Flatten->Dense rule, and
`twins convert` end to end, on the current Keras backend."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import torch_impl
from parity_tests.conftest import keras_contract_build
from torch_impl.weights import state_dict_numpy
from twins import checkpoints
from twins.checkpoints import CheckpointMismatchError

pytestmark = pytest.mark.keras


def keras_numpy(model):
    import keras

    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def test_resnet18_checkpoint_into_resnet50_fails_with_one_message_listing_everything():
    from keras_impl.weights import load_torch_state_dict

    model = keras_contract_build("resnet50")
    before = keras_numpy(model)
    with pytest.raises(CheckpointMismatchError) as info:
        load_torch_state_dict(model, torch_impl.build("resnet18").state_dict())
    message = str(info.value)
    assert message.startswith("checkpoint does not fit resnet50")
    assert "missing keys (in the model, not in the checkpoint)" in message and "layer1.0.conv3.weight" in message
    assert "layer1.0.conv1.weight: model (64, 64, 1, 1) vs checkpoint (64, 64, 3, 3)" in message
    assert "fc.weight: model (1000, 2048) vs checkpoint (1000, 512)" in message
    # nothing half-loaded
    assert all(np.array_equal(a, b) for a, b in zip(before, keras_numpy(model)))


def test_unexpected_keys_are_listed_and_counters_ignored():
    from keras_impl.weights import load_torch_state_dict

    state = state_dict_numpy(torch_impl.build("resnet18"))
    state["extra.weight"] = np.zeros(3, np.float32)
    model = keras_contract_build("resnet18")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys.*\n\s+extra.weight"):
        load_torch_state_dict(model, state)
    report = load_torch_state_dict(model, state, strict=False)
    assert report.unexpected == ["extra.weight"] and not report.missing  # num_batches_tracked ignored


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_checkpoint_files_load_through_the_bridge(tmp_path, suffix):
    import keras

    from keras_impl.weights import load_torch_state_dict

    torch.manual_seed(1)
    source = torch_impl.build("resnet18", num_classes=4).eval()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        checkpoints.write(path, state_dict_numpy(source))
    model = keras_contract_build("resnet18", num_classes=4)
    assert load_torch_state_dict(model, path).ok
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        want = source(torch.from_numpy(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x.transpose(0, 2, 3, 1), training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_dense_after_flatten_permutes_rows_from_chw_to_hwc():
    """The rule AlexNet/VGG heads need: torch flattens C*H*W, Keras H*W*C."""
    import keras

    from keras_impl.weights import load_torch_state_dict, torch_state_dict

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
            self.classifier = torch.nn.Linear(4 * 5 * 6, 7)

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    tiny = Tiny().eval()
    inputs = keras.Input((5, 6, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(4, 3, name="features-0")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(7, name="classifier")(x))
    load_torch_state_dict(model, tiny.state_dict())
    x = np.random.RandomState(0).randn(2, 3, 5, 6).astype(np.float32)
    with torch.no_grad():
        want = tiny(torch.from_numpy(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    exported = torch_state_dict(model)
    assert all(np.array_equal(exported[k], v.numpy()) for k, v in tiny.state_dict().items())


@pytest.fixture
def run_twins(capsys):
    """`twins ...` in this process (its Keras backend is this run's), returning code and output."""
    from twins_cli.main import main

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_convert_torch_to_keras_and_back(tmp_path, run_twins):
    torch.manual_seed(2)
    source = torch_impl.build("resnet18")
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    for keras_file in ("r18.weights.h5", "r18.keras"):
        done = run_twins("convert", str(tmp_path / "r18.pth"), str(tmp_path / keras_file), "--model", "resnet18")
        assert done.returncode == 0, done.stderr
        back = tmp_path / f"{keras_file}.safetensors"
        done = run_twins("convert", str(tmp_path / keras_file), str(back), "--model", "resnet18")
        assert done.returncode == 0, done.stderr
        state = checkpoints.read(back)
        for k, v in source.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert np.array_equal(state[k], v.numpy()), k
    assert checkpoints.temp_files(tmp_path) == []


def test_convert_with_new_class_count_keeps_a_fresh_head(tmp_path, run_twins):
    source = torch_impl.build("resnet18")
    checkpoints.write(tmp_path / "r18.safetensors", state_dict_numpy(source))
    done = run_twins("convert", str(tmp_path / "r18.safetensors"), str(tmp_path / "r18_2.safetensors"),
                     "--model", "resnet18", "--num-classes", "2", "--exclude", "fc")
    assert done.returncode == 0, done.stderr
    assert "fresh: fc.weight, fc.bias" in done.stdout
    state = checkpoints.read(tmp_path / "r18_2.safetensors")
    assert state["fc.weight"].shape == (2, 512)
    assert np.array_equal(state["layer3.1.conv2.weight"], source.state_dict()["layer3.1.conv2.weight"].numpy())


def test_convert_keeps_a_trained_head_whose_class_count_is_asked_for(tmp_path, run_twins):
    """A fine-tuned 10-class checkpoint converted with --num-classes 10: the same class count as the
    checkpoint's, so the trained head is kept, bit for bit (not compared with the registry's 1000)."""
    torch.manual_seed(3)
    source = torch_impl.build("resnet50", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "ck10.pth")
    done = run_twins("convert", str(tmp_path / "ck10.pth"), str(tmp_path / "out.safetensors"),
                     "--model", "resnet50", "--num-classes", "10")
    assert done.returncode == 0, done.stderr
    assert "skipped 0" in done.stdout and "fresh:" not in done.stdout
    state = checkpoints.read(tmp_path / "out.safetensors")
    for key in ("fc.weight", "fc.bias", "layer4.2.bn3.running_var"):
        assert np.array_equal(state[key], source.state_dict()[key].numpy()), key
    # Without --num-classes the checkpoint's own count is used, with the same result.
    done = run_twins("convert", str(tmp_path / "ck10.pth"), str(tmp_path / "out2.safetensors"), "--model", "resnet50")
    assert done.returncode == 0 and np.array_equal(checkpoints.read(tmp_path / "out2.safetensors")["fc.weight"],
                                                   state["fc.weight"])
    # Another count means a fresh head of that size.
    done = run_twins("convert", str(tmp_path / "ck10.pth"), str(tmp_path / "out3.safetensors"),
                     "--model", "resnet50", "--num-classes", "4")
    assert done.returncode == 0 and "fresh: fc.weight, fc.bias" in done.stdout
    assert checkpoints.read(tmp_path / "out3.safetensors")["fc.weight"].shape == (4, 2048)


def test_convert_from_a_bad_source_writes_nothing(tmp_path, run_twins):
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 not really a zip")
    done = run_twins("convert", str(tmp_path / "broken.pth"), str(tmp_path / "out.weights.h5"), "--model", "resnet18")
    assert done.returncode == 2
    assert "could not read as a PyTorch checkpoint" in done.stderr
    checkpoints.write(tmp_path / "r18.safetensors", state_dict_numpy(torch_impl.build("resnet18")))
    done = run_twins("convert", str(tmp_path / "r18.safetensors"), str(tmp_path / "out.weights.h5"), "--model", "resnet50")
    assert done.returncode == 2 and "checkpoint does not fit resnet50" in done.stderr
    done = run_twins("convert", str(tmp_path / "r18.safetensors"), str(tmp_path / "out.weights.h5"), "--model", "resnet51")
    assert done.returncode == 2 and "unknown model name 'resnet51'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pth", "r18.safetensors"]


@pytest.mark.parametrize("make", [
    lambda k: k.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal"),
    lambda k: k.initializers.VarianceScaling(2.0, mode="fan_in", distribution="uniform"),
    lambda k: k.initializers.GlorotUniform(),
    lambda k: k.initializers.HeNormal(),  # truncated
    lambda k: k.initializers.RandomNormal(0.0, 0.01),
    lambda k: k.initializers.TruncatedNormal(0.5, 0.2),
    lambda k: k.initializers.RandomUniform(-0.3, 0.3),
], ids=["he-fan-out", "he-uniform", "glorot-uniform", "he-truncated", "normal", "truncated", "uniform"])
def test_numpy_drawn_initial_values_follow_the_initializers_distribution(make):
    """The parity engine's drawn twins (`initial_values_drawn_by_numpy`): numpy draws what the Keras initializer
    would, same mean, spread and range (checked against the initializer's own draw on this backend)."""
    import keras

    from keras_impl.common import NumpyDrawn

    shape = (3, 3, 64, 96)
    own = keras.ops.convert_to_numpy(make(keras)(shape, dtype="float32")).astype(np.float64)
    ours = NumpyDrawn(make(keras), np.random.default_rng(0))(shape, dtype="float32")
    assert ours.dtype == np.float32 and ours.shape == shape
    assert abs(ours.mean() - own.mean()) < 0.05 * own.std() + 1e-6
    assert abs(ours.std() / own.std() - 1) < 0.03
    # The range (truncation at 2 standard deviations, the uniform limits), read at the 99.9th percentile of |x|:
    # Keras' torch backend truncates by taking the first of 4 draws inside the range, and keeps the first draw
    # when none is (p = 0.0455 ** 4 an element: a 3x3x64x96 kernel holds one such value one time in four, up to
    # 2.9 standard deviations), so its maximum is not its range. Without the truncation the percentile is 3.3 sd.
    def spread(x):
        return np.quantile(np.abs(x - x.mean()), 0.999)

    assert abs(spread(ours) / spread(own) - 1) < 0.1


def test_numpy_drawn_keeps_constants_and_leaves_other_initializers_to_the_backend():
    import keras

    from keras_impl.common import NumpyDrawn, initial_values_drawn_by_numpy

    rng = np.random.default_rng(0)
    assert (NumpyDrawn(keras.initializers.get("ones"), rng)((4,)) == 1).all()
    assert (NumpyDrawn(keras.initializers.get("zeros"), rng)((2, 3), dtype="float64") == 0).all()
    assert (NumpyDrawn(keras.initializers.Constant(0.25), rng)((3,)) == 0.25).all()
    q = keras.ops.convert_to_numpy(NumpyDrawn(keras.initializers.Orthogonal(), rng)((8, 8)))
    np.testing.assert_allclose(q.T @ q, np.eye(8), atol=1e-5)  # drawn by the backend, still orthogonal
    with initial_values_drawn_by_numpy(3):
        a = keras.layers.Dense(5)
        a.build((None, 4))
    with initial_values_drawn_by_numpy(3):
        b = keras.layers.Dense(5)
        b.build((None, 4))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.kernel), keras.ops.convert_to_numpy(b.kernel))
    assert keras.ops.convert_to_numpy(a.kernel).std() > 0 and (keras.ops.convert_to_numpy(a.bias) == 0).all()
