"""Image data for both frameworks, numpy + OpenCV only: the ImageFolder layout, the fine-tuning seed's
train / val transforms, and a batch plan that makes every batch a pure function of (seed, epoch,
batch index).

    folder = ImageFolder("DATA", "train")              # DATA/train/<class>/*.jpg
    plan = BatchPlan(folder, batch_size=8, transform=train_transform(224), shuffle=True, seed=0)
    x, y = plan.batch(epoch=0, index=3)                  # NHWC float32, int64 labels

`torch_impl.train` wraps a plan as a `Dataset` / `DataLoader` (the adapter transposes to NCHW),
`keras_impl.train` as a `keras.utils.PyDataset`; both frameworks then see the same pixels in the same
order. Because a batch depends only on (seed, epoch, index), workers on either side may load batches in
any order and a resumed run redraws exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from twins.registry import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset folder or image that cannot be used; the message names the file or folder."""


# ----------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); grayscale and alpha images are converted."""
    path = str(path)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"unreadable image: {path} (not an image OpenCV can decode, or truncated)")
    if image.dtype != np.uint8:  # 16-bit PNG / TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(np.iinfo(image.dtype).max), 1.0))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class ImageFolder:
    """`root/split/<class>/<image>`: classes are the sub-folders in sorted order (torchvision's
    ImageFolder convention), labels their indices."""

    root: Path
    split: str
    classes: list[str]
    samples: list[tuple[Path, int]]

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"no {split!r} folder: expected {folder}/<class>/<image>")
        self.classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DataError(f"{folder} has no class folders: expected {folder}/<class>/<image>")
        self.samples = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (folder / name).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"empty class folder: {folder / name} has no images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            self.samples += [(path, label) for path in files]

    def __len__(self) -> int:
        return len(self.samples)


def check_same_classes(train: ImageFolder, val: ImageFolder) -> None:
    """Train and val must name the same classes, or label i would mean two different things."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"{train.root / train.split} and {val.root / val.split} have different classes: "
            f"only in {train.split}: {only_train or 'none'}; only in {val.split}: {only_val or 'none'}"
        )


# ----------------------------------------------------------------------------------------------
# Transforms: `f(image uint8 HWC RGB, rng) -> float32 HWC`


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    interpolation = cv2.INTER_AREA if height < image.shape[0] and width < image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop: a crop of random area fraction `scale` and aspect `ratio`
    (log-uniform), ten tries, then the centre crop of the clamped ratio; resized to `size` x `size`."""
    h, w = image.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return resize(image[top:top + ch, left:left + cw], size, size)
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(image[top:top + ch, left:left + cw], size, size)


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(int): the shorter side becomes `size`, the aspect ratio is kept."""
    h, w = image.shape[:2]
    if h <= w:
        return resize(image, size, max(1, int(size * w / h)))
    return resize(image, max(1, int(size * h / w)), size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h < size or w < size:
        raise DataError(f"center crop of {size}x{size} from a {h}x{w} image")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top:top + size, left:left + size]


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 RGB -> float32 in [0, 1] -> (x - mean) / std per channel."""
    x = image.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def train_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """The seed's training transform: RandomResizedCrop(size), RandomHorizontalFlip, ToTensor, Normalize."""

    def transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = random_resized_crop(image, size, rng)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return normalize(image, mean, std)

    return transform


def val_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """The seed's validation transform: Resize(size) on the short side, CenterCrop(size), Normalize."""

    def transform(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return normalize(center_crop(resize_short_side(image, size), size), mean, std)

    return transform


# ----------------------------------------------------------------------------------------------
# Batches


class BatchPlan:
    """The batches of one split: batch `index` of `epoch` is a pure function of (seed, epoch, index).

    With `shuffle`, epoch e visits the samples in the permutation drawn from `default_rng([seed, e])`;
    sample k of that order is transformed with `default_rng([seed, e, k])`. The last batch may be
    smaller (no sample is dropped, as the seed's DataLoader)."""

    def __init__(self, folder: ImageFolder, batch_size: int, transform: Callable, *, shuffle: bool, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.folder, self.batch_size, self.transform = folder, batch_size, transform
        self.shuffle, self.seed = shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.folder) / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.folder)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.folder)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a {len(self)}-batch epoch")
        positions = range(index * self.batch_size, min((index + 1) * self.batch_size, len(self.folder)))
        order = self.order(epoch)
        images, labels = [], []
        for k in positions:
            path, label = self.folder.samples[order[k]]
            images.append(self.transform(read_image(path), np.random.default_rng([self.seed, epoch, k])))
            labels.append(label)
        return np.stack(images).astype(np.float32), np.asarray(labels, np.int64)
