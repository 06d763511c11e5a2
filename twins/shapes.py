"""Small learnable image sets that a network can learn from scratch in minutes on a CPU: dark shapes
(discs against squares, and triangles if asked) of random colours, sizes and positions on light, noisy
backgrounds; for the saliency seed, a bright blob among dim distractors with its Gaussian saliency map; and
for PSPNet, bright shapes on a dim background with their label maps.

    twins shapes DATA [--train 200 --val 50 --size 64 --seed 0]    # DATA/{train,val}/{disc,square}/*.jpg
    make_food101("FOOD")                      # FOOD/meta/{classes,labels,train,test}.txt, FOOD/images/<class>/<id>.jpg
    make_salicon("SAL")                       # SAL/image/{train,val}/<id>.jpg, SAL/mask/{train,val}/<id>.png
    make_cifar10("CIFAR")                     # CIFAR/data_batch_1..5, test_batch, batches.meta (python pickles)
    make_voc("VOC")                           # VOC/JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/

They stand in for the seeds' data sets (the hymenoptera ants/bees ImageFolder, Food-101, SALICON, CIFAR-10,
PASCAL VOC; no dataset can be downloaded here) in the README's commands and the tests.
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import cv2
import numpy as np

from twins import checkpoints

CLASSES = ("disc", "square")
SHAPES = CLASSES + ("triangle",)


def draw(kind: str, size: int, rng: np.random.Generator, width: int | None = None, color=None) -> np.ndarray:
    """One RGB uint8 image, `size` x `width` (square by default): a dark shape of random colour, size and
    position on a light, noisy background; the shape lies inside the central square, as a dish in the
    middle of a photo. (With random light/dark polarity, or several small shapes, ResNet-18 from scratch
    under the seed's RandomResizedCrop did not get past chance in 20 epochs at 64x64.)"""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(SHAPES)}")
    height, width = size, width or size
    side = min(height, width)
    background = rng.integers(150, 256, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    color = tuple(int(c) for c in (rng.integers(0, 100, size=3) if color is None else color))
    radius = max(2, int(rng.uniform(0.25, 0.4) * side))
    cx, cy = (int(rng.uniform(radius, side - radius)) for _ in range(2))
    cx, cy = cx + (width - side) // 2, cy + (height - side) // 2
    if kind == "disc":
        cv2.circle(image, (cx, cy), radius, color, thickness=-1, lineType=cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(image, (cx - radius, cy - radius), (cx + radius, cy + radius), color, thickness=-1)
    else:
        angles = np.deg2rad([-90, 30, 150])
        corners = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(image, [np.round(corners).astype(np.int32)], color, lineType=cv2.LINE_AA)
    return image


def write_jpeg(path: Path, image: np.ndarray) -> None:
    """An RGB uint8 image as a quality-95 JPEG, written atomically."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    checkpoints.write_atomic(path, lambda tmp: tmp.write_bytes(encoded.tobytes()))


def make_shapes(root: str | os.PathLike, train: int = 200, val: int = 50, size: int = 64, seed: int = 0) -> Path:
    """Write `train` and `val` images per class under `root/{train,val}/{disc,square}/`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_jpeg(folder / f"{kind}_{i:04d}.jpg", draw(kind, size, rng))
    return root


def make_food101(root: str | os.PathLike, classes: tuple[str, ...] = CLASSES, train: int = 150, test: int = 50,
                 size: int = 64, seed: int = 0) -> Path:
    """Write a Food-101-layout folder, `train` and `test` images per class (shapes from `SHAPES`):
    `root/meta/classes.txt` (`classes` in the given order), `labels.txt` (readable names, as the real
    one), `train.txt` and `test.txt` (`class/id` lines), `root/images/<class>/<id>.jpg`.

    The images are not square, so the crops matter: short side `size`, long side 1.25 to 1.5 times it,
    landscape and portrait in turn. The shape lies inside the central square, which the val crop keeps
    whole and the seed's buggy central crop (the left square of a landscape image) can cut into."""
    unknown = [kind for kind in classes if kind not in SHAPES]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct shapes from {', '.join(SHAPES)}; got {', '.join(classes)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    number = 0  # image ids are unique across classes and splits, as Food-101's
    for split, count in (("train", train), ("test", test)):
        for kind in classes:
            folder = root / "images" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                long = int(rng.integers(size * 5 // 4, size * 3 // 2 + 1))
                height, width = (size, long) if i % 2 == 0 else (long, size)
                image_id = f"{number:07d}"
                write_jpeg(folder / f"{image_id}.jpg", draw(kind, height, rng, width=width))
                lists[split].append(f"{kind}/{image_id}")
                number += 1
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    lists["classes"] = list(classes)
    lists["labels"] = [kind.replace("_", " ").capitalize() for kind in classes]
    for name, lines in lists.items():
        text = "".join(f"{line}\n" for line in lines)
        checkpoints.write_atomic(meta / f"{name}.txt", lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return root


def draw_salient(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its uint8 saliency map: a dim, noisy background with two to four dim grey
    shapes (distractors) and one bright, saturated disc; the map is a Gaussian on the disc's centre with a
    spread of its radius, peaking at 255. What draws the eye is the one bright colourful thing, so a
    network can learn where it is from the pixels."""
    side = min(height, width)
    image = np.clip(rng.integers(30, 70) + rng.normal(0, 10, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        grey = int(rng.integers(60, 110))
        r = max(2, int(rng.uniform(0.06, 0.14) * side))
        cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
        if rng.random() < 0.5:
            cv2.circle(image, (cx, cy), r, (grey, grey, grey), thickness=-1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), (grey, grey, grey), thickness=-1)
    radius = max(2, int(rng.uniform(0.08, 0.14) * side))
    cx, cy = int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius))
    color = [int(rng.integers(200, 256)), int(rng.integers(120, 256)), int(rng.integers(0, 90))]
    rng.shuffle(color)
    cv2.circle(image, (cx, cy), radius, tuple(color), thickness=-1, lineType=cv2.LINE_AA)
    ys, xs = np.mgrid[0:height, 0:width]
    saliency = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2.0 * radius ** 2))
    return image, np.round(255.0 * saliency).astype(np.uint8)


def make_salicon(root: str | os.PathLike, train: int = 200, val: int = 50, size: int = 64, seed: int = 0) -> Path:
    """Write a SALICON-layout folder (seed 000's): `root/image/{train,val}/<id>.jpg`, 4:3 images
    `size * 4 // 3` x `size` as SALICON's 640x480, and `root/mask/{train,val}/<id>.png`, each image's
    saliency map (`draw_salient`) at the image's size."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size, size * 4 // 3
    for split, count in (("train", train), ("val", val)):
        images, masks = root / "image" / split, root / "mask" / split
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, saliency = draw_salient(height, width, rng)
            name = f"{split}_{i:05d}"
            write_jpeg(images / f"{name}.jpg", image)
            ok, encoded = cv2.imencode(".png", saliency)
            if not ok:
                raise RuntimeError("OpenCV could not encode a PNG")
            checkpoints.write_atomic(masks / f"{name}.png", lambda tmp, data=encoded.tobytes(): tmp.write_bytes(data))
    return root


# The generated CIFAR-10's classes: a shape (disc, square, triangle) in one of four tints, ten of the twelve
# pairs; the names are CIFAR-10's, so the folder reads as CIFAR-10 in every tool.
CIFAR_TINTS = ((90, 10, 10), (10, 70, 10), (10, 10, 90), (45, 45, 45))


def draw_cifar(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 image of class `label` (0..9): shape `SHAPES[label % 3]` in tint `CIFAR_TINTS[label // 3]`."""
    tint = np.asarray(CIFAR_TINTS[label // 3]) + rng.integers(-8, 9, size=3)
    return draw(SHAPES[label % 3], 32, rng, color=np.clip(tint, 0, 255))


def make_cifar10(root: str | os.PathLike, train: int = 100, test: int = 20, seed: int = 0) -> Path:
    """CIFAR-10's python version (`data_batch_1..5`, `test_batch`, `batches.meta`, pickled dicts as the
    official files: bytes keys, `data` uint8 (N, 3072) as R, G, B planes, `labels` a list) with `train` images
    per batch file and `test` in the test batch, labels cycling through the ten classes."""
    from twins.data import CIFAR10_CLASSES

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def write(name: str, content: dict) -> None:
        checkpoints.write_atomic(root / name, lambda tmp: tmp.write_bytes(pickle.dumps(content, protocol=2)))

    for name, count in [(f"data_batch_{i}", train) for i in range(1, 6)] + [("test_batch", test)]:
        labels = [int(i % 10) for i in rng.permutation(count)]
        images = np.stack([draw_cifar(label, rng) for label in labels]) if count else np.zeros((0, 32, 32, 3), np.uint8)
        write(name, {b"batch_label": name.encode(), b"labels": labels,
                     b"data": images.transpose(0, 3, 1, 2).reshape(count, 3072).copy(),
                     b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(count)]})
    write("batches.meta", {b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_cases_per_batch": train,
                           b"num_vis": 3072})
    return root


# The generated VOC folder's classes (`ROOT/classes.txt`), label i naming VOC_SHAPE_CLASSES[i].
VOC_SHAPE_CLASSES = ("background",) + SHAPES


def fill_shape(canvas: np.ndarray, kind: str, cx: int, cy: int, radius: int, color, antialias: bool) -> None:
    """Draw shape `kind` (`draw`'s geometry: a disc of `radius`, a square of half-side `radius`, an upright
    equilateral triangle inscribed in the disc) filled with `color` onto `canvas` in place; a label map is
    drawn without anti-aliasing, so its pixels hold class indices and nothing between."""
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    if kind == "disc":
        cv2.circle(canvas, (cx, cy), radius, color, thickness=-1, lineType=line)
    elif kind == "square":
        cv2.rectangle(canvas, (cx - radius, cy - radius), (cx + radius, cy + radius), color, thickness=-1)
    elif kind == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        corners = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], color, lineType=line)
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(SHAPES)}")


def draw_segmentation(height: int, width: int, rng: np.random.Generator, first: str | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its uint8 label map: a dim, noisy background with one to three bright shapes
    (disc, square, triangle), kept apart where ten tries find room; `first`, when given, is drawn last, on
    top, so it is always seen. Each shape's
    colour is a random bright hue whatever its class, so only the shape tells the class. The label holds the
    class index of `VOC_SHAPE_CLASSES` per pixel and, as VOC's, a band of 255 (ignored) along every visible
    object outline: one pixel inside and one outside, where the image's anti-aliased edge blends colours."""
    side = min(height, width)
    image = np.clip(rng.integers(20, 60) + rng.normal(0, 8, size=(height, width, 3)), 0, 255).astype(np.uint8)
    instances = np.zeros((height, width), np.uint8)  # which object each pixel shows, 0 = background
    label = np.zeros((height, width), np.uint8)
    kinds = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(int(rng.integers(1, 4)))]
    if first is not None:
        kinds[-1] = first
    placed: list[tuple[int, int, int]] = []
    for number, kind in enumerate(kinds, 1):
        radius = max(3, int(rng.uniform(0.14, 0.26) * side))
        for _ in range(10):  # apart from the others if it fits in ten tries, else overlapping (occlusion)
            cx, cy = int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius))
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                break
        placed.append((cx, cy, radius))
        hsv = np.uint8([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(200, 256)]]])
        color = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
        fill_shape(image, kind, cx, cy, radius, color, antialias=True)
        fill_shape(instances, kind, cx, cy, radius, number, antialias=False)
        fill_shape(label, kind, cx, cy, radius, VOC_SHAPE_CLASSES.index(kind), antialias=False)
    kernel = np.ones((3, 3), np.uint8)
    outline = cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)
    label[outline] = 255
    return image, label


def make_voc(root: str | os.PathLike, train: int = 200, val: int = 50, size: int = 64, seed: int = 0) -> Path:
    """Write a PASCAL VOC-layout segmentation folder (seed 004's): `root/JPEGImages/<id>.jpg`, images
    `size` x `size * 5 // 4` (not square, so the val transform's padding matters), `root/SegmentationClass/
    <id>.png` palette label PNGs (`draw_segmentation`; 0 background, 1 disc, 2 square, 3 triangle, 255 the
    outline band), `root/ImageSets/Segmentation/{train,val}.txt` and `root/classes.txt`. Image k of a split
    always shows shape k % 3, so every class is in every three consecutive images."""
    from twins.data import write_label_png

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size, size * 5 // 4
    for split, count in (("train", train), ("val", val)):
        ids = []
        for i in range(count):
            image, label = draw_segmentation(height, width, rng, first=SHAPES[i % len(SHAPES)])
            image_id = f"{split}_{i:05d}"
            write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", image)
            write_label_png(root / "SegmentationClass" / f"{image_id}.png", label)
            ids.append(image_id)
        text = "".join(f"{i}\n" for i in ids)
        checkpoints.write_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt",
                                 lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    text = "".join(f"{name}\n" for name in VOC_SHAPE_CLASSES)
    checkpoints.write_atomic(root / "classes.txt", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return root
