"""The Food-101 half of the VGG-19 seed (SPEC section 4), framework-free: the meta/ list reader and its
errors, the seed's square crops (with its central-crop column offset fixed), `BatchPlan(drop_last=True)`
as the seed's `drop_remainder=True`, and `make_food101`, the learnable stand-in folder."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from twins.data import (BatchPlan, DataError, Food101, food101_train_transform, food101_val_transform, read_image)
from twins.shapes import SHAPES, draw, make_food101

CLASSES = ["waffles", "apple_pie"]  # not sorted: classes.txt's order is the label order
TRAIN = ["waffles/101", "apple_pie/7", "waffles/102"]
TEST = ["apple_pie/8", "waffles/103"]


def write_food(root, classes=CLASSES, train=TRAIN, test=TEST):
    """A hand-written Food-101 folder; every listed image exists (a 12x20 JPEG)."""
    (root / "meta").mkdir(parents=True)
    for name, lines in (("classes", classes), ("train", train), ("test", test)):
        (root / "meta" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    for entry in train + test:
        (root / "images" / entry).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{entry}.jpg"), np.full((12, 20, 3), 128, np.uint8))
    return root


def test_reader_lists_classes_labels_and_paths(tmp_path):
    root = write_food(tmp_path, train=["", *TRAIN[:2], "   ", TRAIN[2], ""])  # blank lines are ignored
    food = Food101(root, "train")
    assert food.root == root and food.split == "train" and food.classes == CLASSES
    assert food.samples == [(root / "images" / "waffles" / "101.jpg", 0), (root / "images" / "apple_pie" / "7.jpg", 1),
                            (root / "images" / "waffles" / "102.jpg", 0)]
    assert len(food) == 3
    test = Food101(root, "test")
    assert [label for _, label in test.samples] == [1, 0] and test.classes == CLASSES
    val = Food101(root, "val")  # the seed validates on test.txt
    assert val.split == "test" and val.samples == test.samples
    with pytest.raises(ValueError, match=r"unknown Food-101 split 'valid'; expected one of train, test, val"):
        Food101(root, "valid")


def _missing_classes(root):
    (root / "meta" / "classes.txt").unlink()


def _missing_train(root):
    (root / "meta" / "train.txt").unlink()


def _edit(name, lines):
    return lambda root: (root / "meta" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))


def _missing_image(root):
    (root / "images" / "apple_pie" / "7.jpg").unlink()


@pytest.mark.parametrize("damage, message", [
    (_missing_classes, r"missing Food-101 meta file: .*meta/classes\.txt \(expected ROOT/meta/classes\.txt"),
    (_missing_train, r"missing Food-101 meta file: .*meta/train\.txt"),
    (_edit("classes", ["", " "]), r".*meta/classes\.txt names no classes"),
    (_edit("classes", ["waffles", "apple_pie", "waffles"]), r".*meta/classes\.txt:3: class 'waffles' repeats an earlier line"),
    (_edit("classes", ["waffles", "apple/pie"]), r".*meta/classes\.txt:2: class 'apple/pie' contains '/'"),
    (_edit("train", ["waffles/101", "", "apple_pie"]), r".*meta/train\.txt:3: expected 'class_name/image_id', got 'apple_pie'"),
    (_edit("train", ["waffles/101/x"]), r".*meta/train\.txt:1: expected 'class_name/image_id', got 'waffles/101/x'"),
    (_edit("train", ["/101"]), r".*meta/train\.txt:1: expected 'class_name/image_id', got '/101'"),
    (_edit("train", ["waffles/101", "pancakes/7"]),
     r".*meta/train\.txt:2: class 'pancakes' is not in .*meta/classes\.txt"),
    (_edit("train", ["waffles/101", "waffles/1O2"]), r".*meta/train\.txt:2: missing image .*images/waffles/1O2\.jpg"),
    (_missing_image, r".*meta/train\.txt:2: missing image .*images/apple_pie/7\.jpg"),
    (_edit("train", ["", "  "]), r".*meta/train\.txt lists no images"),
])
def test_errors_name_the_file_and_line(tmp_path, damage, message):
    root = write_food(tmp_path)
    damage(root)
    with pytest.raises(DataError, match=message):
        Food101(root, "train")


def test_a_class_folder_that_does_not_exist_is_a_missing_image(tmp_path):
    root = write_food(tmp_path)
    for path in (root / "images" / "apple_pie").iterdir():
        path.unlink()
    (root / "images" / "apple_pie").rmdir()
    with pytest.raises(DataError, match=r"train\.txt:2: missing image .*images/apple_pie/7\.jpg"):
        Food101(root, "train")


def coordinates(h, w):
    """R = 2 * row, G = 2 * column, B = 50: every pixel says where it came from."""
    rows, cols = np.mgrid[:h, :w]
    return np.dstack([2 * rows, 2 * cols, np.full((h, w), 50)]).astype(np.uint8)


@pytest.mark.parametrize("h, w", [(60, 100), (100, 60)])
def test_val_crop_is_the_central_square_not_the_seeds(h, w):
    image = coordinates(h, w)
    out = food101_val_transform(size=60)(image)  # crop side 60: no resize, the crop itself
    top, left = (h - 60) // 2, (w - 60) // 2
    assert (top, left) == ((0, 20) if w > h else (20, 0))
    assert out.dtype == np.float32 and out.shape == (60, 60, 3)
    assert np.array_equal(out, image[top:top + 60, left:left + 60].astype(np.float32) / 255)
    assert np.array_equal(np.round(out[0, :, 1] * 255), 2 * np.arange(left, left + 60))  # the central columns
    # the seed: ho = (shape[0] - crop) // 2; wo = (shape[0] - crop) // 2
    crop = min(h, w)
    ho, wo = (h - crop) // 2, (h - crop) // 2
    assert (ho, wo) != (top, left)
    seed = image[ho:ho + crop, wo:wo + crop]  # landscape: the left square; portrait: a clipped 60x40 strip
    assert seed.shape != out.shape or not np.array_equal(seed.astype(np.float32) / 255, out)


def test_train_crop_is_a_function_of_the_rng_inside_the_image():
    h, w, margin = 40, 60, 5
    side = min(h, w) - 2 * margin
    image = coordinates(h, w)
    train = food101_train_transform(size=side, margin=margin)  # no resize: the output is the crop
    tops, lefts = set(), set()
    for seed in range(600):
        out = train(image, np.random.default_rng(seed))
        top, left = int(round(out[0, 0, 0] * 255)) // 2, int(round(out[0, 0, 1] * 255)) // 2
        assert np.array_equal(out, image[top:top + side, left:left + side].astype(np.float32) / 255)
        rng = np.random.default_rng(seed)  # tf.random_crop: top, then left, uniform over all that fit
        assert (top, left) == (rng.integers(0, h - side + 1), rng.integers(0, w - side + 1))
        tops.add(top)
        lefts.add(left)
    assert tops == set(range(h - side + 1)) and lefts == set(range(w - side + 1))  # every position, edges too
    a, b = train(image, np.random.default_rng(7)), train(image, np.random.default_rng(7))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("h, w, size", [(70, 90, 32), (30, 41, 64)])  # down- and upscaling
def test_transforms_give_size_by_size_float32_in_unit_range(h, w, size):
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    for out in (food101_train_transform(size, margin=3)(image, np.random.default_rng(1)),
                food101_val_transform(size)(image)):
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_a_smaller_crop_is_enlarged_by_area_interpolation():
    """INTER_AREA enlarging by a whole factor replicates pixels (a box filter, as TF's AREA), no blur."""
    image = np.random.default_rng(0).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    out = food101_val_transform(size=8)(image)
    crop = image[:, 1:5].astype(np.float32) / 255
    assert np.array_equal(out, np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1))


def test_an_image_too_small_for_the_margin_is_refused():
    train = food101_train_transform(size=8, margin=10)
    assert train(np.zeros((21, 30, 3), np.uint8), np.random.default_rng(0)).shape == (8, 8, 3)  # side 1
    with pytest.raises(DataError, match=re.escape("a 20x30 image is too small for a square crop with margin 10 "
                                                  "(both sides must be at least 21)")):
        train(np.zeros((20, 30, 3), np.uint8), np.random.default_rng(0))


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    return make_food101(tmp_path_factory.mktemp("food"), train=5, test=3, size=32, seed=1)


def test_drop_last_keeps_only_full_batches_with_the_same_pixels(food):
    folder = Food101(food, "train")
    transform = food101_train_transform(size=16, margin=4)
    full = BatchPlan(folder, 4, transform, shuffle=True, seed=3)
    dropped = BatchPlan(folder, 4, transform, shuffle=True, seed=3, drop_last=True)
    assert (len(full), len(dropped)) == (3, 2)
    assert dropped.num_samples == full.num_samples == full.samples_per_epoch == 10
    assert dropped.samples_per_epoch == 8
    for epoch in range(2):
        for index in range(2):
            x, y = dropped.batch(epoch, index)
            assert x.shape == (4, 16, 16, 3) and y.shape == (4,)
            fx, fy = full.batch(epoch, index)
            assert np.array_equal(x, fx) and np.array_equal(y, fy)
    with pytest.raises(IndexError):
        dropped.batch(0, 2)
    with pytest.raises(DataError, match=r"'test' has 6 images, not one full batch of 8 \(drop_last\)"):
        BatchPlan(Food101(food, "val"), 8, food101_val_transform(16), shuffle=False, drop_last=True)


def test_make_food101_writes_a_readable_non_square_folder(food, tmp_path):
    train, test = Food101(food, "train"), Food101(food, "test")
    assert train.classes == ["disc", "square"] and (len(train), len(test)) == (10, 6)
    assert [label for _, label in train.samples] == [0] * 5 + [1] * 5
    assert (food / "meta" / "labels.txt").read_text() == "Disc\nSquare\n"
    ids = [path.stem for path, _ in train.samples + test.samples]
    assert len(set(ids)) == len(ids)
    shapes = {read_image(path).shape[:2] for path, _ in train.samples + test.samples}
    assert all(32 in (h, w) and 40 <= max(h, w) <= 48 for h, w in shapes)
    assert any(h < w for h, w in shapes) and any(h > w for h, w in shapes)
    x, _ = BatchPlan(train, 10, food101_train_transform(size=16, margin=4), shuffle=True).batch(0, 0)
    assert x.shape == (10, 16, 16, 3)

    order = make_food101(tmp_path / "three", classes=("triangle", "disc", "square"), train=2, test=1, size=24)
    assert Food101(order, "val").classes == ["triangle", "disc", "square"]
    with pytest.raises(ValueError, match=r"classes must be distinct shapes from disc, square, triangle; got disc, pizza"):
        make_food101(tmp_path / "bad", classes=("disc", "pizza"))


def test_make_food101_is_deterministic_in_the_seed(food, tmp_path):
    again = make_food101(tmp_path / "again", train=5, test=3, size=32, seed=1)
    other = make_food101(tmp_path / "other", train=5, test=3, size=32, seed=2)
    files = sorted(p.relative_to(food) for p in food.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((food / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((food / f).read_bytes() != (other / f).read_bytes() for f in files if f.suffix == ".jpg")


@pytest.mark.parametrize("kind", SHAPES)
def test_the_shape_lies_in_the_central_square(kind):
    """So the val crop holds the whole shape, and the seed's left-square crop would cut into it."""
    rng = np.random.default_rng(0)
    for height, width in [(48, 72)] * 20 + [(72, 48)] * 20:
        image = draw(kind, height, rng, width=width)
        dark = np.argwhere(image.max(axis=2) < 100)  # the shape's colour; the background is >= 150 +- noise
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        assert len(dark) and (dark.min(axis=0) >= [top, left]).all()
        assert (dark.max(axis=0) < [top + side, left + side]).all()
