"""Small learnable image sets that a network can learn from scratch in minutes on a CPU: dark shapes
(discs against squares, and triangles if asked) of random colours, sizes and positions on light, noisy
backgrounds.

    twins shapes DATA [--train 200 --val 50 --size 64 --seed 0]    # DATA/{train,val}/{disc,square}/*.jpg
    make_food101("FOOD")                      # FOOD/meta/{classes,labels,train,test}.txt, FOOD/images/<class>/<id>.jpg

They stand in for the seeds' data sets (the hymenoptera ants/bees ImageFolder, Food-101; no dataset
can be downloaded here) in the README's commands and the tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from twins import checkpoints

CLASSES = ("disc", "square")
SHAPES = CLASSES + ("triangle",)


def draw(kind: str, size: int, rng: np.random.Generator, width: int | None = None) -> np.ndarray:
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
    color = tuple(int(c) for c in rng.integers(0, 100, size=3))
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
