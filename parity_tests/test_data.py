"""The framework-free data half (`twins.data`, `twins.metrics`, `twins.shapes`): the ImageFolder reader
and its errors, the seed's transforms, and batches that are a pure function of (seed, epoch, index)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from twins import metrics
from twins.data import (BatchPlan, DataError, ImageFolder, center_crop, check_same_classes, normalize,
                        random_resized_crop, read_image, resize_short_side, train_transform, val_transform)
from twins.shapes import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=5, val=3, size=40, seed=1)


def test_image_folder_lists_classes_in_sorted_order(shapes):
    folder = ImageFolder(shapes, "train")
    assert folder.classes == ["disc", "square"]
    assert len(folder) == 10
    assert [label for _, label in folder.samples] == [0] * 5 + [1] * 5
    assert all(path.parent.name == folder.classes[label] for path, label in folder.samples)


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"no 'train' folder: expected .*/train/<class>/<image>"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train has no class folders"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "train" / "cats").mkdir()
    (tmp_path / "train" / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"empty class folder: .*train/cats has no images"):
        ImageFolder(tmp_path, "train")


def test_train_and_val_with_different_classes_are_refused(shapes, tmp_path):
    make_shapes(tmp_path, train=1, val=1, size=16)
    (tmp_path / "val" / "square").rename(tmp_path / "val" / "triangle")
    with pytest.raises(DataError, match=r"different classes: only in train: \['square'\]; only in val: \['triangle'\]"):
        check_same_classes(ImageFolder(tmp_path, "train"), ImageFolder(tmp_path, "val"))


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"unreadable image: .*broken.jpg"):
        read_image(bad)


def test_read_image_gives_rgb_for_gray_alpha_and_16_bit(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    rgb = read_image(tmp_path / "c.png")
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [0, 0, 200]
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 5), 77, np.uint8))
    assert read_image(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([bgr, np.full((4, 5), 9, np.uint8)]))
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [0, 0, 200]
    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 5), 65535, np.uint16))
    assert read_image(tmp_path / "w.png")[0, 0].tolist() == [255, 255, 255]


def test_transforms_follow_the_seed():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    assert resize_short_side(image, 20).shape == (20, 33, 3)
    assert center_crop(resize_short_side(image, 20), 20).shape == (20, 20, 3)
    for _ in range(20):
        assert random_resized_crop(image, 16, rng).shape == (16, 16, 3)
    x = normalize(np.full((1, 1, 3), 255, np.uint8))
    assert np.allclose(x[0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    val = val_transform(24)
    assert np.array_equal(val(image), val(image)) and val(image).dtype == np.float32
    train = train_transform(24)
    assert np.array_equal(train(image, np.random.default_rng(5)), train(image, np.random.default_rng(5)))
    assert not np.array_equal(train(image, np.random.default_rng(5)), train(image, np.random.default_rng(6)))


def test_a_batch_is_a_pure_function_of_seed_epoch_and_index(shapes):
    folder = ImageFolder(shapes, "train")
    plan = BatchPlan(folder, 4, train_transform(32), shuffle=True, seed=3)
    assert len(plan) == 3
    x, y = plan.batch(1, 2)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int64  # last batch smaller
    again = BatchPlan(folder, 4, train_transform(32), shuffle=True, seed=3)
    for index in range(3):  # in any order, from a fresh plan
        a, b = plan.batch(1, 2 - index), again.batch(1, 2 - index)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(plan.order(0), plan.order(1))
    assert sorted(plan.order(0)) == list(range(10))
    labels = np.concatenate([plan.batch(0, i)[1] for i in range(3)])
    assert np.array_equal(labels, np.array([l for _, l in folder.samples])[plan.order(0)])
    fixed = BatchPlan(folder, 4, val_transform(32), shuffle=False)
    assert np.array_equal(fixed.batch(0, 0)[1], [0, 0, 0, 0])
    with pytest.raises(IndexError):
        plan.batch(0, 3)


def test_metrics():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    labels = np.array([0, 1])
    manual = -np.mean([np.log(np.exp(2.0) / np.exp(logits[0]).sum()), np.log(np.exp(0.2) / np.exp(logits[1]).sum())])
    assert metrics.cross_entropy(logits, labels) == pytest.approx(manual, rel=1e-12)
    assert metrics.correct(logits, labels) == 1
    idx, probs = metrics.top_k(logits, 2)
    assert idx.tolist() == [[0, 1], [2, 1]] and np.all(np.diff(probs, axis=1) <= 0)
    with pytest.raises(ValueError, match=r"label out of range: labels span \[0, 3\] for 3 classes"):
        metrics.cross_entropy(logits, np.array([0, 3]))
