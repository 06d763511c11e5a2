"""The CIFAR-10 python-batch reader and the SimCLR seed's two-view augmentation (`twins.data`), numpy +
OpenCV, the same batches for both frameworks."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from twins.data import (BatchPlan, Cifar10, DataError, color_jitter, cifar_test_transform, grayscale,
                        simclr_view_transform, two_views)
from twins.registry import CIFAR_MEAN, CIFAR_STD
from twins.shapes import make_cifar10


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar10(tmp_path_factory.mktemp("cifar"), train=8, test=6, seed=1)


def test_the_python_batches_read_as_cifar_10(cifar):
    train, test = Cifar10(cifar, "train"), Cifar10(cifar, "test")
    assert len(train) == 40 and len(test) == 6 and len(Cifar10(cifar, "val")) == 6
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    with open(cifar / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # data is R, G, B planes of 32x32 per row: pixel (y, x) of image i is data[i, c * 1024 + y * 32 + x]
    i, y, x = 3, 5, 17
    assert tuple(train.images[8 + i, y, x]) == tuple(raw[b"data"][i, c * 1024 + y * 32 + x] for c in range(3))
    assert train.labels[8 + i] == raw[b"labels"][i] and train.samples[8 + i] == (8 + i, raw[b"labels"][i])


def rewrite(folder, name, content, raw=False):
    (folder / name).write_bytes(content if raw else pickle.dumps(content, protocol=2))


@pytest.fixture
def broken(cifar, tmp_path):
    for path in cifar.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


def test_a_missing_or_malformed_batch_is_named(broken):
    (broken / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"lacks data_batch_3: expected the CIFAR-10 python batches"):
        Cifar10(broken, "train")
    rewrite(broken, "data_batch_3", b"not a pickle at all", raw=True)
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 python batch"):
        Cifar10(broken, "train")
    rewrite(broken, "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_3 has no 'labels'"):
        Cifar10(broken, "train")
    rewrite(broken, "data_batch_3", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"'data' is uint8 \(2, 1024\), expected uint8 \(N, 3072\)"):
        Cifar10(broken, "train")
    rewrite(broken, "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataError, match=r"label 10 at index 1 is out of range 0..9"):
        Cifar10(broken, "train")
    rewrite(broken, "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(DataError, match=r"1 labels for 2 images"):
        Cifar10(broken, "train")
    with pytest.raises(DataError, match=r"unknown CIFAR-10 split 'dev'"):
        Cifar10(broken, "dev")


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_batch_that_would_run_code_is_refused(broken):
    rewrite(broken, "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Payload()})
    with pytest.raises(DataError, match=r"test_batch is not a CIFAR-10 python batch: .*names posix.system"):
        Cifar10(broken, "test")


def test_two_views_are_independent_draws_in_interleaved_rows(cifar):
    """Sample k's two views sit at rows 2k and 2k+1; they differ (independent draws), and the batch is a pure
    function of (seed, epoch, index); the test transform only normalises."""
    folder = Cifar10(cifar, "train")
    plan = BatchPlan(folder, 4, two_views(simclr_view_transform()), shuffle=True, seed=3)
    x, y = plan.batch(1, 2)
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and y.shape == (4,)
    again, _ = plan.batch(1, 2)
    assert np.array_equal(x, again)
    for k in range(4):
        assert not np.array_equal(x[2 * k], x[2 * k + 1])
    # rows 2k, 2k+1 are views of sample k: re-drawn by hand with the plan's generator for that sample
    order = plan.order(1)
    rng = np.random.default_rng([3, 1, 2 * 4 + 1])
    view = simclr_view_transform()
    first, second = view(folder.images[order[9]], rng), view(folder.images[order[9]], rng)
    assert np.array_equal(x[2], first) and np.array_equal(x[3], second)
    plain, _ = BatchPlan(folder, 4, cifar_test_transform(), shuffle=False).batch(0, 0)
    expected = (folder.images[:4] / 255.0 - np.asarray(CIFAR_MEAN)) / np.asarray(CIFAR_STD)
    assert np.allclose(plain, expected, atol=1e-5)


def test_color_jitter_is_torchvisions_arithmetic():
    """Each factor at its identity leaves the image; brightness scales and clips; saturation 0 is the luma;
    a hue turn of 1/3 moves red to green."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
    assert np.allclose(color_jitter(image, rng, 0, 0, 0, 0), image, atol=1e-6)

    class Fixed:  # a generator whose uniform() returns fixed factors and whose permutation is the identity
        def __init__(self, *factors):
            self.factors = list(factors)

        def uniform(self, low, high):
            return self.factors.pop(0)

        def permutation(self, n):
            return np.arange(n)

    assert np.allclose(color_jitter(image, Fixed(1.5, 1, 1, 0)), np.clip(image * 1.5, 0, 1), atol=1e-6)
    assert np.allclose(color_jitter(image, Fixed(1, 1, 0, 0)), np.repeat(grayscale(image), 3, 2), atol=1e-6)
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 0.8
    assert np.allclose(color_jitter(red, Fixed(1, 1, 1, 1 / 3)), [0, 0.8, 0], atol=1e-5)
