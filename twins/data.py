"""Image data for both frameworks, numpy + OpenCV only: the ImageFolder layout, the fine-tuning seed's
train / val transforms, the Food-101 layout with the VGG-19 seed's square crops, and a batch plan that
makes every batch a pure function of (seed, epoch, batch index).

    folder = ImageFolder("DATA", "train")              # DATA/train/<class>/*.jpg
    plan = BatchPlan(folder, batch_size=8, transform=train_transform(224), shuffle=True, seed=0)
    x, y = plan.batch(epoch=0, index=3)                  # NHWC float32, int64 labels
    food = Food101("food-101", "train")                  # meta/{classes,train,test}.txt, images/<class>/<id>.jpg
    plan = BatchPlan(food, 64, food101_train_transform(224, margin=10), shuffle=True, drop_last=True)

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


@dataclass
class Food101:
    """The Food-101 layout: `ROOT/meta/classes.txt` (one class a line; its order is the label order),
    `ROOT/meta/{train,test}.txt` (lines `class_name/image_id`), images at
    `ROOT/images/class_name/image_id.jpg`. Split "val" reads test.txt, as the seed validates on it.

    Every listed image is checked to exist here (one directory listing per class), so a typo in a list
    fails at start rather than mid-epoch. Blank lines are ignored; line numbers in errors count them."""

    root: Path
    split: str
    classes: list[str]
    samples: list[tuple[Path, int]]

    SPLITS = {"train": "train", "test": "test", "val": "test"}

    def __init__(self, root: str | os.PathLike, split: str):
        if split not in self.SPLITS:
            raise ValueError(f"unknown Food-101 split {split!r}; expected one of {', '.join(self.SPLITS)}")
        self.root, self.split = Path(root), self.SPLITS[split]
        classes_path = self.root / "meta" / "classes.txt"
        self.classes = []
        for number, name in _meta_lines(classes_path):
            if "/" in name or name in self.classes:
                reason = "contains '/'" if "/" in name else "repeats an earlier line"
                raise DataError(f"{classes_path}:{number}: class {name!r} {reason}")
            self.classes.append(name)
        if not self.classes:
            raise DataError(f"{classes_path} names no classes")
        labels = {name: label for label, name in enumerate(self.classes)}
        list_path = self.root / "meta" / f"{self.split}.txt"
        images = self.root / "images"
        listings: dict[str, set[str]] = {}  # class -> file names in its folder
        self.samples = []
        for number, line in _meta_lines(list_path):
            name, _, image_id = line.partition("/")
            if not name or not image_id or "/" in image_id:
                raise DataError(f"{list_path}:{number}: expected 'class_name/image_id', got {line!r}")
            if name not in labels:
                raise DataError(f"{list_path}:{number}: class {name!r} is not in {classes_path}")
            if name not in listings:
                folder = images / name
                listings[name] = set(os.listdir(folder)) if folder.is_dir() else set()
            path = images / name / f"{image_id}.jpg"
            if path.name not in listings[name]:
                raise DataError(f"{list_path}:{number}: missing image {path}")
            self.samples.append((path, labels[name]))
        if not self.samples:
            raise DataError(f"{list_path} lists no images")

    def __len__(self) -> int:
        return len(self.samples)


def _meta_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a Food-101 meta file."""
    if not path.is_file():
        raise DataError(f"missing Food-101 meta file: {path} (expected ROOT/meta/classes.txt, train.txt, test.txt)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


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


def food101_square_side(image: np.ndarray, margin: int) -> int:
    """The Food-101 seed's crop side, `min(h, w) - 2 * margin`; an image too small for it is refused."""
    h, w = image.shape[:2]
    side = min(h, w) - 2 * margin
    if side < 1:
        raise DataError(f"a {h}x{w} image is too small for a square crop with margin {margin} "
                        f"(both sides must be at least {2 * margin + 1})")
    return side


def food101_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """uint8 crop -> float32 in [0, 1] -> `size` x `size` by area interpolation, in that order as the seed
    (convert_image_dtype, then resize_images AREA), so no rounding to uint8 happens in between.
    INTER_AREA is used both ways: a crop smaller than `size` is enlarged by the same box filter (pixels
    replicated, blended only where an output pixel straddles two input pixels), as TF's AREA does."""
    return cv2.resize(crop.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_AREA)


def food101_train_transform(size: int = 224, margin: int = 10) -> Callable:
    """The Food-101 seed's training transform: a square crop of side `min(h, w) - 2 * margin` at a
    uniformly random position (tf.random_crop: top, then left, uniform over every position that fits),
    area-resized to `size` x `size`, pixels in [0, 1] (no mean / std)."""

    def transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = food101_square_side(image, margin)
        h, w = image.shape[:2]
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        return food101_resize(image[top:top + side, left:left + side], size)

    return transform


def food101_val_transform(size: int = 224) -> Callable:
    """The Food-101 seed's validation (and inference) transform: the central square of side `min(h, w)`,
    area-resized, pixels in [0, 1]. The seed takes the column offset from the height
    (`wo = (shape[0] - crop) // 2`), which crops the left square of a landscape image and a clipped,
    non-square strip of a portrait one; here the column offset comes from the width."""

    def transform(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        side = food101_square_side(image, 0)
        h, w = image.shape[:2]
        top, left = (h - side) // 2, (w - side) // 2
        return food101_resize(image[top:top + side, left:left + side], size)

    return transform


# ----------------------------------------------------------------------------------------------
# Batches


class BatchPlan:
    """The batches of one split: batch `index` of `epoch` is a pure function of (seed, epoch, index).

    With `shuffle`, epoch e visits the samples in the permutation drawn from `default_rng([seed, e])`;
    sample k of that order is transformed with `default_rng([seed, e, k])`. The last batch may be
    smaller (no sample is dropped, as the seed's DataLoader). With `drop_last` (the Food-101 seed's
    `drop_remainder=True`) every batch is full: `len(plan) == n // batch_size`, and the last
    `n % batch_size` samples of each epoch's order are not visited (other ones each shuffled epoch);
    the kept batches hold the same pixels as without `drop_last`. `num_samples` is still the folder's
    size, `samples_per_epoch` the number an epoch visits."""

    def __init__(self, folder: ImageFolder | Food101, batch_size: int, transform: Callable, *, shuffle: bool,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if drop_last and len(folder) < batch_size:
            raise DataError(f"{folder.root} {folder.split!r} has {len(folder)} images, not one full batch of "
                            f"{batch_size} (drop_last)")
        self.folder, self.batch_size, self.transform = folder, batch_size, transform
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.folder) // self.batch_size
        return math.ceil(len(self.folder) / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.folder)

    @property
    def samples_per_epoch(self) -> int:
        """The samples an epoch's batches hold: `num_samples` less the remainder `drop_last` drops."""
        return len(self) * self.batch_size if self.drop_last else len(self.folder)

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
