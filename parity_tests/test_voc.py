"""PSPNet's data and metrics, framework-free (`twins.data`, `twins.metrics`, `twins.tasks`, `twins.shapes`): the
VOC layout and its errors, label PNGs (palette, index, VOC-coloured RGB), the joint scale / crop / flip (one draw
moves image and label; labels by nearest neighbour), the padding that is not scored, and the confusion matrix,
IoU, mIoU, pixel accuracy and cross-entropy with an ignore label, summed over a phase."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from twins import checkpoints, metrics, tasks
from twins.data import (IGNORE_LABEL, VOC_CLASSES, VOC_PALETTE, BatchPlan, DataError, Voc, colorize, overlay,
                        read_label, voc_train_transform, voc_val_transform, write_label_png)
from twins.registry import IMAGENET_MEAN, IMAGENET_STD
from twins.shapes import VOC_SHAPE_CLASSES, make_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), train=6, val=3, size=32, seed=3)


def denormalise(x: np.ndarray, channel: int) -> np.ndarray:
    """A normalised channel back in 0..255."""
    return (x[..., channel] * IMAGENET_STD[channel] + IMAGENET_MEAN[channel]) * 255.0


# ----------------------------------------------------------------------------------------------
# Label files


def test_the_palette_is_vocs_colormap():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert tuple(VOC_PALETTE[0]) == (0, 0, 0) and tuple(VOC_PALETTE[1]) == (128, 0, 0)
    assert tuple(VOC_PALETTE[15]) == (192, 128, 128)  # person
    assert tuple(VOC_PALETTE[255]) == (224, 224, 192)  # the outline band
    assert len({tuple(c) for c in VOC_PALETTE}) == 256  # every index its own colour, so RGB maps back
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"


def test_a_palette_label_round_trips(tmp_path):
    label = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9) % 21
    label[2:4, 3:6] = IGNORE_LABEL
    path = write_label_png(tmp_path / "a.png", label)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[:256], VOC_PALETTE)
    read = read_label(path)
    assert read.dtype == np.uint8 and np.array_equal(read, label)
    assert checkpoints.temp_files(tmp_path) == []
    # the indices are read as they are, whatever colours the file's own palette shows
    other = Image.fromarray(label, mode="P")
    other.putpalette(bytes(range(256)) * 3)
    other.save(tmp_path / "b.png")
    assert np.array_equal(read_label(tmp_path / "b.png"), label)


def test_an_rgb_label_is_mapped_through_the_palette_and_an_unknown_colour_refused(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, (6, 8)).astype(np.uint8)
    label[0, :3] = IGNORE_LABEL
    rgb = colorize(label)
    assert rgb.shape == (6, 8, 3) and tuple(rgb[0, 0]) == (224, 224, 192)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(read_label(tmp_path / "rgb.png"), label)
    rgb[4, 5] = (1, 2, 3)
    rgb[5, 7] = (9, 9, 9)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: colour \(1, 2, 3\) at pixel \(x=5, y=4\) is not in the VOC "
                                        r"palette \(2 such pixels\)"):
        read_label(tmp_path / "odd.png")


def test_an_index_png_is_read_as_it_is_and_other_files_are_refused(tmp_path):
    label = np.random.default_rng(1).integers(0, 21, (5, 4)).astype(np.uint8)
    label[1, 1] = IGNORE_LABEL
    cv2.imwrite(str(tmp_path / "index.png"), label)
    with Image.open(tmp_path / "index.png") as image:
        assert image.mode == "L"
    assert np.array_equal(read_label(tmp_path / "index.png"), label)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"unreadable label: .*junk.png"):
        read_label(tmp_path / "junk.png")
    with pytest.raises(DataError, match=r"unreadable label: .*absent.png"):
        read_label(tmp_path / "absent.png")
    cv2.imwrite(str(tmp_path / "deep.png"), label.astype(np.uint16) * 300)
    with pytest.raises(DataError, match=r"deep.png has mode 'I"):
        read_label(tmp_path / "deep.png")


def test_overlay_keeps_the_image_under_ignore_pixels():
    image = np.full((2, 3, 3), 100, np.uint8)
    label = np.array([[0, 1, 255], [15, 255, 0]], np.uint8)
    blended = overlay(image, label, alpha=0.5)
    assert np.array_equal(blended[0, 2], image[0, 2]) and np.array_equal(blended[1, 1], image[1, 1])
    assert tuple(blended[0, 1]) == (114, 50, 50) and tuple(blended[0, 0]) == (50, 50, 50)
    with pytest.raises(ValueError, match=r"label values span \[-1, 1\]"):
        colorize(np.array([[-1, 1]]))


# ----------------------------------------------------------------------------------------------
# The VOC layout


def write_pair(root, image_id, image, label):
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), image)
    write_label_png(root / "SegmentationClass" / f"{image_id}.png", label)


def write_list(root, split, ids):
    folder = root / "ImageSets" / "Segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids) + "\n")


def test_the_voc_reader_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(DataError, match=r"missing VOC list file: .*ImageSets/Segmentation/train.txt"):
        Voc(tmp_path, "train")
    ids = [f"2007_{i:06d}" for i in range(6)]
    write_list(tmp_path, "train", ids)
    with pytest.raises(DataError, match=r"missing image for 6 of 6 ids in .*train.txt: .*JPEGImages/2007_000000.jpg, "
                                        r".*2007_000001.jpg, .*2007_000002.jpg and 3 more"):
        Voc(tmp_path, "train")
    label = np.zeros((8, 10), np.uint8)
    for i in ids[:2]:
        write_pair(tmp_path, i, np.zeros((8, 10, 3), np.uint8), label)
    for i in ids[2:]:
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"{i}.jpg"), np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(DataError, match=r"missing label for 4 of 6 ids in .*: .*SegmentationClass/2007_000002.png"):
        Voc(tmp_path, "train")
    write_list(tmp_path, "train", ids[:2])
    pairs = Voc(tmp_path, "train")
    assert pairs.classes == VOC_CLASSES and len(pairs) == 2
    assert pairs.samples[1] == (tmp_path / "JPEGImages" / f"{ids[1]}.jpg",
                                tmp_path / "SegmentationClass" / f"{ids[1]}.png")
    x, y = pairs.example(0, voc_val_transform(10), None)
    assert x.shape == (10, 10, 3) and y.shape == (10, 10)
    write_label_png(tmp_path / "SegmentationClass" / f"{ids[1]}.png", np.zeros((10, 8), np.uint8))
    with pytest.raises(DataError, match=r"2007_000001.png is 8x10, its image .*2007_000001.jpg is 10x8: a label must"):
        pairs.example(1, voc_val_transform(10), None)
    bad = label.copy()
    bad[3, 4] = 21  # one past VOC's 21 classes
    write_label_png(tmp_path / "SegmentationClass" / f"{ids[1]}.png", bad)
    with pytest.raises(DataError, match=r"2007_000001.png: label out of range: value 21 at pixel \(x=4, y=3\) for "
                                        r"21 classes"):
        pairs.example(1, voc_val_transform(10), None)
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    bad[3, 4] = 2
    write_label_png(tmp_path / "SegmentationClass" / f"{ids[1]}.png", bad)
    with pytest.raises(DataError, match=r"label out of range: value 2 .* for 2 classes"):
        Voc(tmp_path, "train").example(1, voc_val_transform(10), None)
    (tmp_path / "classes.txt").write_text("background\nthing\nthing\n")
    with pytest.raises(DataError, match=r"classes.txt repeats thing"):
        Voc(tmp_path, "train")


# ----------------------------------------------------------------------------------------------
# Transforms


# Class values whose bilinear blends (1, 2, 4, 5, 6, ...) are not class values, so a label resized by anything
# but nearest neighbour shows; each drawn into the image as its own grey level.
GREYS = {0: 20, 3: 90, 7: 160, IGNORE_LABEL: 240}


def block_pair(height=40, width=56, block=8, seed=0):
    """A label of random classes in `block`-sized squares and an image whose red channel is the label's grey level
    (green and blue random blocks too, so the image is not its label)."""
    rng = np.random.default_rng(seed)
    values = np.array(list(GREYS))
    label = np.kron(rng.choice(values, (height // block + 1, width // block + 1)), np.ones((block, block), int))
    label = label[:height, :width].astype(np.uint8)
    image = np.kron(rng.integers(0, 256, (height // block + 1, width // block + 1, 3)), np.ones((block, block, 1), int))
    image = image[:height, :width].astype(np.uint8)
    image[..., 0] = np.vectorize(GREYS.get)(label)
    return image, label


def test_one_random_draw_moves_image_and_label_together():
    """At scale 1 the crop, flip and padding are exact: the image's red channel is its label's grey level
    wherever the label is not padding, and the padding (rows 40.. of a 40-row image cropped to 48) is the mean
    colour (0 normalised) with label 255. The draws are reproducible from the generator and differ across it."""
    image, label = block_pair()
    transform = voc_train_transform(48, scale=(1.0, 1.0))
    inverse = np.vectorize(GREYS.get)
    seen, flips = set(), 0
    for seed in range(30):
        x, y = transform(image, label, np.random.default_rng(seed))
        assert x.shape == (48, 48, 3) and x.dtype == np.float32 and y.shape == (48, 48) and y.dtype == np.int64
        assert np.all(y[40:] == IGNORE_LABEL) and np.all(x[40:] == 0)
        assert np.allclose(denormalise(x[:40], 0), inverse(y[:40]), atol=1e-3), seed
        again = transform(image, label, np.random.default_rng(seed))
        assert np.array_equal(again[0], x) and np.array_equal(again[1], y)
        seen.add(y.tobytes())
        for left in range(56 - 48 + 1):
            if np.array_equal(y[:40], label[:, left:left + 48][:, ::-1]) and \
                    not np.array_equal(y[:40], label[:, left:left + 48]):
                flips += 1
                break
    assert len(seen) > 10 and 5 < flips < 25


def test_scaled_labels_are_resized_by_nearest_neighbour():
    """Across random scales in [0.5, 2] the label holds only the classes it had (and 255), and it stays on its
    image: away from block edges, where bilinear and nearest agree, the red channel is the label's grey."""
    image, label = block_pair(block=16, seed=1)
    transform = voc_train_transform(48)
    inverse = np.vectorize(GREYS.get)
    sizes = set()
    for seed in range(20):
        x, y = transform(image, label, np.random.default_rng(seed))
        assert set(np.unique(y)) <= set(GREYS)
        scored = denormalise(x, 0)
        content = ~((y == IGNORE_LABEL) & (x[..., 0] == 0))  # not padding
        agree = np.abs(scored - inverse(y)) < 1.0
        assert agree[content].mean() > 0.7, seed
        sizes.add(int((x[..., 1] == 0).all(axis=1).sum()))  # padded rows
    assert len(sizes) > 3  # the scale differs between draws


def test_the_val_transform_fits_the_longer_side_and_pads_with_ignore():
    image, label = block_pair(height=30, width=50, block=5, seed=2)
    x, y = voc_val_transform(40)(image, label)
    assert x.shape == (40, 40, 3) and y.shape == (40, 40) and y.dtype == np.int64
    assert np.array_equal(y[:24], cv2.resize(label, (40, 24), interpolation=cv2.INTER_NEAREST))
    expected = (cv2.resize(image, (40, 24), interpolation=cv2.INTER_LINEAR) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(x[:24], expected, atol=1e-5)
    assert np.all(y[24:] == IGNORE_LABEL) and np.all(x[24:] == 0)
    tall, _ = voc_val_transform(40)(image.transpose(1, 0, 2).copy(), label.T.copy())
    assert np.all(tall[:, 24:] == 0) and not np.all(tall[:, 23] == 0)


def test_a_batch_of_voc_pairs_is_float32_nhwc_and_int64_nhw(voc):
    plan = BatchPlan(Voc(voc, "train"), 4, voc_train_transform(33), shuffle=True, seed=5)
    x, y = plan.batch(0, 0)
    assert x.shape == (4, 33, 33, 3) and x.dtype == np.float32
    assert y.shape == (4, 33, 33) and y.dtype == np.int64
    assert set(np.unique(y)) <= {0, 1, 2, 3, IGNORE_LABEL}
    again = plan.batch(0, 0)
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)
    last = plan.batch(0, 1)
    assert last[0].shape == (2, 33, 33, 3) and last[1].shape == (2, 33, 33)


# ----------------------------------------------------------------------------------------------
# Metrics


def test_confusion_iou_and_accuracy_of_a_hand_computed_example():
    target = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 3]])  # the 3 lies under an ignored pixel: not counted
    conf = metrics.confusion_matrix(pred, target, 4)
    assert conf.dtype == np.int64
    assert conf.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    scores = metrics.segmentation_scores(conf)
    # IoU: class 0 = 2 / (3 + 3 - 2), class 1 = 2 / (2 + 3 - 2), class 2 = 1 / (2 + 1 - 1); class 3 absent
    assert np.allclose(scores["iou"][:3], [0.5, 2 / 3, 0.5]) and math.isnan(scores["iou"][3])
    assert scores["miou"] == pytest.approx(5 / 9)  # semseg's mean over all four would be 5 / 12
    assert scores["acc"] == pytest.approx(5 / 7) and scores["pixels"] == 7
    with pytest.raises(ValueError, match=r"target value 7 is out of range 0..3"):
        metrics.confusion_matrix(pred, np.where(target == 2, 7, target), 4)
    with pytest.raises(ValueError, match=r"differ in shape"):
        metrics.confusion_matrix(pred[:, :3], target, 4)


def test_an_all_ignored_input_scores_zero_with_zero_pixels():
    scores = metrics.segmentation_scores(metrics.confusion_matrix(np.zeros((2, 3), int), np.full((2, 3), 255), 3))
    assert scores["miou"] == 0.0 and scores["acc"] == 0.0 and scores["pixels"] == 0
    assert metrics.segmentation_cross_entropy(np.zeros((1, 2, 3, 3)), np.full((1, 2, 3), 255)) == (0.0, 0)


def test_segmentation_cross_entropy_sums_over_the_scored_pixels():
    rng = np.random.default_rng(4)
    logits, labels = rng.normal(0, 3, (2, 3, 4, 5)), rng.integers(0, 5, (2, 3, 4))
    labels[0, 1, :2] = labels[1, 2, 3] = 255
    total, count = metrics.segmentation_cross_entropy(logits, labels)
    expected, scored = 0.0, 0
    for index in np.ndindex(labels.shape):
        if labels[index] != 255:
            row = logits[index]
            expected += math.log(sum(math.exp(v) for v in row)) - row[labels[index]]
            scored += 1
    assert count == scored == 21 and total == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"label out of range: value 5 for 5 classes"):
        metrics.segmentation_cross_entropy(logits, np.where(labels == 255, 5, labels))


def test_the_segmentation_tally_sums_a_phase_not_its_batch_means():
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(0, 2, (5, 4, 6, 4)), rng.integers(0, 4, (5, 4, 6))
    labels[1, :2] = 255
    labels[3] = np.where(labels[3] == 3, 255, labels[3])
    labels[:2] = np.where(labels[:2] == 2, 0, labels[:2])  # class 2 only in the second batch
    task = tasks.get("segmentation")
    assert task.score == "miou" and task.val_metrics == ("miou", "acc") and task.step_tag == "miou"
    both = task.tally()
    both.add(logits, labels)
    parts = task.tally()
    parts.add(logits[:2], labels[:2])
    first = parts.result()
    parts.add(logits[2:], labels[2:])
    whole, summed = both.result(), parts.result()
    assert summed == pytest.approx(whole) and summed["samples"] == 5
    valid = int((labels != 255).sum())
    assert whole["pixels"] == valid
    total, _ = metrics.segmentation_cross_entropy(logits, labels)
    assert whole["loss"] == pytest.approx(total / valid)
    scores = metrics.segmentation_scores(metrics.confusion_matrix(logits.argmax(-1), labels, 4))
    assert whole["miou"] == pytest.approx(scores["miou"]) and whole["acc"] == pytest.approx(scores["acc"])
    second = task.tally()
    second.add(logits[2:], labels[2:])
    assert whole["miou"] != pytest.approx((first["miou"] + second.result()["miou"]) / 2)
    with pytest.raises(ValueError, match=r"not sums per sample"):
        task.scores(logits, labels)
    assert type(tasks.get("classification").tally()) is tasks.Tally


# ----------------------------------------------------------------------------------------------
# The generated folder


def test_the_generated_voc_folder_reads_back_with_every_shape(voc):
    train, val = Voc(voc, "train"), Voc(voc, "val")
    assert train.classes == list(VOC_SHAPE_CLASSES) == ["background", "disc", "square", "triangle"]
    assert len(train) == 6 and len(val) == 3
    assert checkpoints.temp_files(voc / "SegmentationClass") == []
    counts = np.zeros(256, np.int64)
    for number, (image_path, label_path) in enumerate(train.samples + val.samples):
        with Image.open(label_path) as image:
            assert image.mode == "P"
        label = read_label(label_path)
        assert np.any(label == 1 + number % 3)  # image k of a split always shows shape k % 3 (6 train images)
        assert cv2.imread(str(image_path)).shape == (32, 40, 3) and label.shape == (32, 40)
        counts += np.bincount(label.ravel(), minlength=256)
        # the outline band: every object pixel that touches the background is ignored, so no 4-neighbour pair
        # mixes background and an object
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            assert not np.any(((a == 0) & (b != 0) & (b != 255)) | ((b == 0) & (a != 0) & (a != 255)))
    assert set(np.flatnonzero(counts)) == {0, 1, 2, 3, 255}
    assert min(counts[1:4]) > 50 and counts[255] > 0
