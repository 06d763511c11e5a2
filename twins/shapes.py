"""A small two-class ImageFolder that a network can learn from scratch in minutes on a CPU: discs
against squares, random colours, sizes, positions and background noise.

    twins shapes DATA [--train 200 --val 50 --size 64 --seed 0]    # DATA/{train,val}/{disc,square}/*.jpg

It stands in for the seed's hymenoptera ants/bees folder (no dataset can be downloaded here) in the
README's commands and the tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from twins import checkpoints

CLASSES = ("disc", "square")


def draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image: a dark disc or square of random colour, size and position on a light, noisy
    background. (With random light/dark polarity, or several small shapes, ResNet-18 from scratch under
    the seed's RandomResizedCrop did not get past chance in 20 epochs at 64x64.)"""
    background = rng.integers(150, 256, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    color = tuple(int(c) for c in rng.integers(0, 100, size=3))
    radius = max(2, int(rng.uniform(0.25, 0.4) * size))
    cx, cy = (int(rng.uniform(radius, size - radius)) for _ in range(2))
    if kind == "disc":
        cv2.circle(image, (cx, cy), radius, color, thickness=-1, lineType=cv2.LINE_AA)
    else:
        cv2.rectangle(image, (cx - radius, cy - radius), (cx + radius, cy + radius), color, thickness=-1)
    return image


def make_shapes(root: str | os.PathLike, train: int = 200, val: int = 50, size: int = 64, seed: int = 0) -> Path:
    """Write `train` and `val` images per class under `root/{train,val}/{disc,square}/`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                bgr = cv2.cvtColor(draw(kind, size, rng), cv2.COLOR_RGB2BGR)
                ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise RuntimeError("OpenCV could not encode a JPEG")
                checkpoints.write_atomic(folder / f"{kind}_{i:04d}.jpg", lambda tmp, data=encoded: tmp.write_bytes(data.tobytes()))
    return root
