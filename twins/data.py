"""Image data for both frameworks, numpy + OpenCV (+ Pillow for palette PNGs) only: the ImageFolder layout,
the fine-tuning seed's train / val transforms, the Food-101 layout with the VGG-19 seed's square crops, the
SALICON layout with the saliency seed's joint image / map augmentation, the PASCAL VOC segmentation layout
with PSPNet's scale / crop / flip and its palette, and a batch plan that makes every batch a pure function
of (seed, epoch, batch index).

    folder = ImageFolder("DATA", "train")              # DATA/train/<class>/*.jpg
    plan = BatchPlan(folder, batch_size=8, transform=train_transform(224), shuffle=True, seed=0)
    x, y = plan.batch(epoch=0, index=3)                  # NHWC float32, int64 labels
    food = Food101("food-101", "train")                  # meta/{classes,train,test}.txt, images/<class>/<id>.jpg
    plan = BatchPlan(food, 64, food101_train_transform(224, margin=10), shuffle=True, drop_last=True)
    salicon = Salicon("SALICON", "train")                # image/train/<name>.jpg, mask/train/<name>.png
    x, y = BatchPlan(salicon, 4, salicon_train_transform(256), shuffle=True).batch(0, 0)  # y: NHW1 maps in [0, 1]
    voc = Voc("VOC2012", "train")     # ImageSets/Segmentation/train.txt, JPEGImages/<id>.jpg, SegmentationClass/<id>.png
    x, y = BatchPlan(voc, 8, voc_train_transform(473), shuffle=True).batch(0, 0)  # y: int64 NHW, 255 = ignore

`torch_impl.train` wraps a plan as a `Dataset` / `DataLoader` (the adapter transposes to NCHW),
`keras_impl.train` as a `keras.utils.PyDataset`; both frameworks then see the same pixels in the same
order. Because a batch depends only on (seed, epoch, index), workers on either side may load batches in
any order and a resumed run redraws exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from twins import checkpoints
from twins.registry import CIFAR_MEAN, CIFAR_STD, IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset folder or image that cannot be used; the message names the file or folder."""


# ----------------------------------------------------------------------------------------------
# Reading


def _decode(path: str | os.PathLike, what: str) -> np.ndarray:
    """An image file as OpenCV decodes it (channels as stored, BGR order), scaled to uint8."""
    path = str(path)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"unreadable {what}: {path} (not an image OpenCV can decode, or truncated)")
    if image.dtype != np.uint8:  # 16-bit PNG / TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(np.iinfo(image.dtype).max), 1.0))
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); grayscale and alpha images are converted."""
    image = _decode(path, "image")
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

    def example(self, index: int, transform: Callable, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Sample `index` as `(transform(image, rng), label)`."""
        path, label = self.samples[index]
        return transform(read_image(path), rng), label


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

    example = ImageFolder.example


def _meta_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a Food-101 meta file."""
    if not path.is_file():
        raise DataError(f"missing Food-101 meta file: {path} (expected ROOT/meta/classes.txt, train.txt, test.txt)")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A saliency map as grayscale uint8 (H, W), read as the seed does (`cv2.imread` in colour, then
    `COLOR_BGR2GRAY`; a grayscale file is read as it is)."""
    mask = _decode(path, "saliency map")
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask, cv2.COLOR_BGRA2GRAY if mask.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return mask


def check_map_size(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    """A saliency map must have its image's size: refused, not stretched onto the image."""
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]}: a saliency map must have its image's size")


@dataclass
class Salicon:
    """The SALICON layout of seed 000: images at `ROOT/image/<split>/<name>.jpg`, each with its saliency map
    at `ROOT/mask/<split>/<name>.png` (grayscale, the image's size). Every image's map is checked to exist
    here, so a missing one fails at start rather than mid-epoch; image and map sizes are checked when a
    pair is read (a map of another size is refused, not stretched onto the image)."""

    root: Path
    split: str
    samples: list[tuple[Path, Path]]
    classes: list[str] = field(default_factory=list)  # none: the targets are maps

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split, self.classes = Path(root), split, []
        images, masks = self.root / "image" / split, self.root / "mask" / split
        if not images.is_dir():
            raise DataError(f"no {split!r} images: expected {images}/<name>.jpg (SALICON layout: "
                            f"ROOT/image/{{train,val}}/, ROOT/mask/{{train,val}}/)")
        files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{images} has no images ({', '.join(IMAGE_SUFFIXES)})")
        if not masks.is_dir():
            raise DataError(f"no {split!r} saliency maps: expected {masks}/<name>.png beside {images}")
        present = set(os.listdir(masks))
        missing = [masks / f"{p.stem}.png" for p in files if f"{p.stem}.png" not in present]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"missing saliency map for {len(missing)} of {len(files)} images in {images}: "
                            f"{', '.join(map(str, missing[:3]))}{more}")
        self.samples = [(p, masks / f"{p.stem}.png") for p in files]

    def __len__(self) -> int:
        return len(self.samples)

    def example(self, index: int, transform: Callable, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pair `index` as `transform(image, map, rng)`: one random draw moves both."""
        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        check_map_size(image, mask, image_path, mask_path)
        return transform(image, mask, rng)


CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# What a CIFAR-10 python batch may reconstruct: numpy arrays, and bytes as a Python 3 writer spells them at
# protocol 2 (`_codecs.encode`); nothing that runs code.
_CIFAR_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    """A CIFAR-10 batch is a pickled dict of bytes, lists and numpy arrays; a pickle that names anything else
    (code to run) is refused, as `twins.checkpoints` refuses one in a checkpoint."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch does not hold")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (`data` uint8 [N, 3072] as R, G, B planes of 32x32, `labels` N ints) as
    `(images uint8 [N, 32, 32, 3] RGB, labels int64 [N])`; any other content is a DataError naming the file."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch: it holds a {type(batch).__name__}, not a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path} has no {' or '.join(map(repr, missing))} (keys: {', '.join(map(str, batch))}): "
                        "expected a CIFAR-10 python batch")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(batch["labels"], np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} labels for {len(data)} images")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is out of range 0..9 "
                        f"({bad.size} such labels)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


@dataclass
class Cifar10:
    """CIFAR-10's "python version" folder (`cifar-10-batches-py`): split `train` is `data_batch_1..5`, split
    `test` (or `val`, which the training CLI asks for) is `test_batch`; `batches.meta`'s label names when
    present. The whole split is read into memory (50000 images are 150 MB)."""

    root: Path
    split: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split
        key = "test" if split == "val" else split
        if key not in CIFAR10_FILES:
            raise DataError(f"unknown CIFAR-10 split {split!r}: expected train, test (or val = test)")
        paths = [self.root / name for name in CIFAR10_FILES[key]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{self.root} lacks {', '.join(missing)}: expected the CIFAR-10 python batches "
                            f"({', '.join(CIFAR10_FILES['train'] + CIFAR10_FILES['test'])})")
        parts = [read_cifar_batch(p) for p in paths]
        self.images = np.concatenate([images for images, _ in parts])
        self.labels = np.concatenate([labels for _, labels in parts])
        self.classes = list(CIFAR10_CLASSES)
        meta = self.root / "batches.meta"
        if meta.is_file():
            try:
                with open(meta, "rb") as f:
                    names = _CifarUnpickler(f, encoding="bytes").load()
                names = names.get(b"label_names", names.get("label_names"))
                self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
            except Exception as exc:
                raise DataError(f"{meta} is not CIFAR-10's batches.meta: {type(exc).__name__}: {exc}") from None
            if len(self.classes) != len(CIFAR10_CLASSES):
                raise DataError(f"{meta} names {len(self.classes)} classes, CIFAR-10 has 10")

    @property
    def samples(self) -> list[tuple[int, int]]:
        """`(index, label)` pairs, as the file-based folders' `(path, label)`."""
        return [(i, int(label)) for i, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def example(self, index: int, transform: Callable, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return transform(self.images[index], rng), int(self.labels[index])


# PASCAL VOC 2012's segmentation classes, background first: label i names VOC_CLASSES[i].
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def voc_palette() -> np.ndarray:
    """VOC's 256-entry colormap (the devkit's `labelcolormap.m`): the bits of index i, three at a time
    from the lowest, go to R, G and B from the highest bit down, so 0 is black, 1 (128, 0, 0), 15 (192,
    128, 128) and 255 (224, 224, 192). Every index gets its own colour, so an RGB label maps back."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[index] = rgb
    return palette


VOC_PALETTE = voc_palette()


def _palette_codes() -> tuple[np.ndarray, np.ndarray]:
    """The palette's colours as sorted 24-bit codes and the index of each, for `np.searchsorted`."""
    codes = (VOC_PALETTE.astype(np.int64) << np.array([16, 8, 0])).sum(axis=1)
    order = np.argsort(codes)
    return codes[order], order.astype(np.uint8)


_PALETTE_CODES, _PALETTE_INDICES = _palette_codes()


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A segmentation label PNG as class indices, uint8 (H, W). VOC ships palette PNGs (Pillow mode "P"),
    whose pixel values are the indices whatever colours the palette shows; OpenCV would decode them to
    the palette's colours, which is why Pillow reads labels. A single-channel ("L") PNG holds the indices
    as they are (what most conversion scripts write). An RGB(A) PNG, a label saved through an image
    editor, is mapped back through `VOC_PALETTE` (alpha dropped); a colour that is not in the palette is
    refused rather than guessed, as are other modes (16-bit, bilevel)."""
    from PIL import Image

    path = str(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.asarray(image.convert("RGB") if mode == "RGBA" else image)
    except (OSError, ValueError, SyntaxError) as exc:  # missing, not an image, truncated
        raise DataError(f"unreadable label: {path} ({type(exc).__name__}: {exc})") from None
    if mode in ("P", "L"):
        return pixels.astype(np.uint8, copy=False)
    if mode not in ("RGB", "RGBA"):
        raise DataError(f"label {path} has mode {mode!r}: expected a palette (P), single-channel index (L) or "
                        "VOC-coloured RGB PNG")
    codes = (pixels.astype(np.int64) << np.array([16, 8, 0])).sum(axis=2)
    slots = np.minimum(np.searchsorted(_PALETTE_CODES, codes), len(_PALETTE_CODES) - 1)
    unknown = _PALETTE_CODES[slots] != codes
    if unknown.any():
        y, x = np.unravel_index(np.argmax(unknown), unknown.shape)
        raise DataError(f"label {path}: colour {tuple(int(c) for c in pixels[y, x])} at pixel (x={x}, y={y}) is "
                        f"not in the VOC palette ({int(unknown.sum())} such pixels): an RGB label must use "
                        "VOC's colours")
    return _PALETTE_INDICES[slots]


def _missing(paths: list[Path], folder: Path) -> list[Path]:
    """The paths whose file is not in `folder` (one directory listing, not a stat per file)."""
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    return [p for p in paths if p.name not in present]


@dataclass
class Voc:
    """The PASCAL VOC segmentation layout of seed 004: `ROOT/ImageSets/Segmentation/<split>.txt` (one image id a
    line), images at `ROOT/JPEGImages/<id>.jpg`, labels at `ROOT/SegmentationClass/<id>.png` (`read_label`:
    palette, index or VOC-coloured PNG; 255 marks the outline band that is not scored). Class names come
    from `ROOT/classes.txt` (one a line, background first) when the folder has one, else `VOC_CLASSES`.

    Every listed image and label is checked to exist here, so a typo fails at start rather than
    mid-epoch; sizes and label values are checked when a pair is read."""

    root: Path
    split: str
    classes: list[str]
    samples: list[tuple[Path, Path]]

    def __init__(self, root: str | os.PathLike, split: str):
        self.root, self.split = Path(root), split
        self.classes = self._read_classes(self.root / "classes.txt")
        list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_path.is_file():
            raise DataError(f"missing VOC list file: {list_path} (VOC layout: ROOT/ImageSets/Segmentation/"
                            f"{{train,val}}.txt, one image id a line; ROOT/JPEGImages/<id>.jpg, "
                            f"ROOT/SegmentationClass/<id>.png)")
        ids = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{list_path} lists no image ids")
        images, labels = self.root / "JPEGImages", self.root / "SegmentationClass"
        image_paths, label_paths = [images / f"{i}.jpg" for i in ids], [labels / f"{i}.png" for i in ids]
        for what, paths, folder in (("image", image_paths, images), ("label", label_paths, labels)):
            missing = _missing(paths, folder)
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise DataError(f"missing {what} for {len(missing)} of {len(ids)} ids in {list_path}: "
                                f"{', '.join(map(str, missing[:3]))}{more}")
        self.samples = list(zip(image_paths, label_paths))

    @staticmethod
    def _read_classes(path: Path) -> list[str]:
        if not path.is_file():
            return list(VOC_CLASSES)
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if not names or repeated or len(names) > IGNORE_LABEL:
            reason = (f"repeats {', '.join(repeated)}" if repeated else
                      "names no classes" if not names else f"names {len(names)} classes, at most {IGNORE_LABEL}")
            raise DataError(f"{path} {reason}: expected one class name a line, background first")
        return names

    def __len__(self) -> int:
        return len(self.samples)

    def example(self, index: int, transform: Callable, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pair `index` as `transform(image, label, rng)`: one random draw moves both."""
        image_path, label_path = self.samples[index]
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DataError(f"{label_path} is {label.shape[1]}x{label.shape[0]}, its image {image_path} is "
                            f"{image.shape[1]}x{image.shape[0]}: a label must have its image's size")
        bad = (label >= len(self.classes)) & (label != IGNORE_LABEL)
        if bad.any():
            y, x = np.unravel_index(np.argmax(bad), bad.shape)
            raise DataError(f"{label_path}: label out of range: value {label[y, x]} at pixel (x={x}, y={y}) for "
                            f"{len(self.classes)} classes (0..{len(self.classes) - 1}, {IGNORE_LABEL} ignored)")
        return transform(image, label, rng)


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"a label map is integer (H, W), got {label.dtype} {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values span [{label.min()}, {label.max()}]; a palette holds 0..255")
    return label.astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """A label map as RGB uint8 (H, W, 3) in VOC's colours (255, the outline band, is cream)."""
    return VOC_PALETTE[_check_label(label)]


def overlay(image_rgb: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image_rgb` (uint8 H, W, 3) blended with `colorize(label)` at `alpha`; ignore pixels (255) keep the image,
    so the outline band does not hide where a prediction and the image disagree."""
    label = _check_label(label)
    if image_rgb.shape[:2] != label.shape:
        raise ValueError(f"image {image_rgb.shape[:2]} and label {label.shape} differ in size")
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * VOC_PALETTE[label].astype(np.float32)
    blended = np.where((label == IGNORE_LABEL)[..., None], image_rgb.astype(np.float32), blended)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> Path:
    """A label map as a palette PNG (Pillow mode "P", `VOC_PALETTE`), as VOC ships them: the pixel values are
    the class indices and viewers show VOC's colours. Written atomically."""
    from PIL import Image

    image = Image.fromarray(_check_label(label), mode="P")
    image.putpalette(VOC_PALETTE.tobytes())
    return checkpoints.write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------
# Transforms: `f(image uint8 HWC RGB, rng) -> float32 HWC`; paired ones (SALICON)
# `f(image, map uint8 HW, rng) -> (float32 HWC, float32 HW1)`, (VOC) `f(image, label uint8 HW, rng) ->
# (float32 HWC, int64 HW)`


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


def salicon_resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's `A.Resize(size, size)` on both (bilinear; the aspect ratio is not kept). albumentations
    resizes a mask by nearest neighbour, meant for label maps; a saliency map is a continuous density, so
    it is resized bilinearly like its image."""
    return (cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR),
            cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR))


def salicon_scale(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seed's scaling: image / 255 (no mean / std), map / 255 with a channel axis."""
    return image.astype(np.float32) / 255.0, (mask.astype(np.float32) / 255.0)[..., None]


def salicon_train_transform(size: int = 256) -> Callable:
    """The seed's joint augmentation (albumentations' `Compose` of Resize(size), RandomSizedCrop((240, 256) at
    256 px, scaled with `size`) p 0.4, HorizontalFlip p 0.5, Rotate(+-10 degrees) p 0.6), one draw of `rng`
    moving image and map together: a square crop of random side in the range, at a uniformly random
    position, resized back; a flip; a rotation about the centre with reflected borders
    (`BORDER_REFLECT_101`, albumentations' default), bilinear. Then `salicon_scale`."""
    low = max(1, round(size * 240 / 256))

    def transform(image, mask, rng: np.random.Generator):
        image, mask = salicon_resize(image, mask, size)
        if rng.random() < 0.4:
            side = int(rng.integers(low, size + 1))
            top, left = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            image, mask = salicon_resize(image[top:top + side, left:left + side], mask[top:top + side, left:left + side],
                                         size)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.6:
            matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), float(rng.uniform(-10, 10)), 1.0)
            image, mask = (cv2.warpAffine(np.ascontiguousarray(a), matrix, (size, size), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT_101) for a in (image, mask))
        return salicon_scale(image, mask)

    return transform


def salicon_val_transform(size: int = 256) -> Callable:
    """Validation (and `twins predict`): Resize(size) and `salicon_scale`. The seed's val pipeline also flips
    half the images at random; a validation score should not depend on a coin, so none here."""

    def transform(image, mask, rng: np.random.Generator | None = None):
        return salicon_scale(*salicon_resize(image, mask, size))

    return transform


def grayscale(image01: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (torchvision's rgb_to_grayscale) of a float RGB image in [0, 1], (H, W, 1)."""
    return (image01 @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]


def color_jitter(image01: np.ndarray, rng: np.random.Generator, brightness=0.4, contrast=0.4, saturation=0.4,
                 hue=0.1) -> np.ndarray:
    """torchvision's ColorJitter on a float RGB image in [0, 1] (its tensor path): factors drawn uniformly
    from [1 - b, 1 + b] (brightness, contrast, saturation) and [-hue, hue], applied in a random order;
    brightness scales, contrast blends with the image's mean luma, saturation with each pixel's luma,
    hue rotates the HSV hue; clipped to [0, 1] after each."""
    factors = (rng.uniform(max(0.0, 1 - brightness), 1 + brightness), rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
               rng.uniform(max(0.0, 1 - saturation), 1 + saturation), rng.uniform(-hue, hue))
    x = image01
    for op in rng.permutation(4):
        f = factors[op]
        if op == 0:
            x = x * f
        elif op == 1:
            x = f * x + (1 - f) * grayscale(x).mean()
        elif op == 2:
            x = f * x + (1 - f) * grayscale(x)
        else:
            hsv = cv2.cvtColor(np.clip(x, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
            hsv[..., 0] = (hsv[..., 0] + f * 360.0) % 360.0
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return x


def simclr_view_transform(size: int = 32, mean=CIFAR_MEAN, std=CIFAR_STD) -> Callable:
    """One view of the SimCLR seed's training transform: RandomResizedCrop(size), RandomHorizontalFlip(0.5),
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(0.2), ToTensor, Normalize (CIFAR's
    mean and std)."""

    def transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = random_resized_crop(image, size, rng)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        x = image.astype(np.float32) / 255.0
        if rng.random() < 0.8:
            x = color_jitter(x, rng)
        if rng.random() < 0.2:
            x = np.repeat(grayscale(x), 3, axis=2)
        return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)

    return transform


def two_views(view: Callable) -> Callable:
    """The seed's `CIFAR10Pair`: each sample as two independently drawn views, (2, H, W, C). A plan's batch of
    such samples is flattened to 2B rows, sample k's views at rows 2k and 2k+1: the interleaved pairs
    `nt_xent` expects."""

    def transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([view(image, rng), view(image, rng)])

    transform.views = 2
    return transform


def cifar_train_transform(size: int = 32, padding: int = 4, mean=CIFAR_MEAN, std=CIFAR_STD) -> Callable:
    """The usual CIFAR-10 supervised augmentation (the seed does not give the SL model's): torchvision's
    RandomCrop(size, padding) on the zero-padded image, RandomHorizontalFlip(0.5), ToTensor, Normalize. An image
    of another size is resized to `size` first."""

    def transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if image.shape[:2] != (size, size):
            image = resize(image, size, size)
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        top, left = rng.integers(0, 2 * padding + 1, size=2)
        image = padded[top:top + size, left:left + size]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return normalize(np.ascontiguousarray(image), mean, std)

    return transform


def cifar_test_transform(size: int = 32, mean=CIFAR_MEAN, std=CIFAR_STD) -> Callable:
    """The SimCLR seed's test transform: ToTensor, Normalize (an image of another size resized to `size`)."""

    def transform(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if image.shape[:2] != (size, size):
            image = resize(image, size, size)
        return normalize(image, mean, std)

    return transform


def _pad_bottom_right(x: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a normalised image with 0 (the mean colour, normalised) and its label with `IGNORE_LABEL` at the
    bottom and right to at least `size` x `size`, so the padding is neither a colour nor a scored class."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
    return x, label


def voc_train_transform(size: int, scale=(0.5, 2.0), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """PSPNet's training augmentation (semseg's `RandScale`, `RandomHorizontalFlip`, `Crop(rand)`, `Normalize`),
    one draw of `rng` moving image and label together: both scaled by a factor uniform in `scale` (image
    bilinear, label nearest, so no class is blended into another), normalised, padded at the bottom / right
    to at least `size` x `size` (image with the mean colour, label with 255), a `size` x `size` crop at a
    uniformly random position (top, then left), flipped horizontally with p 0.5.

    semseg also rotates by +-10 degrees and blurs with p 0.5 each; this pipeline keeps scale, crop and flip
    only, as the VOC issue asks. semseg flips before its crop (the same distribution) and centres its
    padding; here padding is at the bottom / right, so a padded image keeps its top-left origin.
    Returns (float32 HWC image, int64 HW label)."""

    def transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        factor = float(rng.uniform(*scale))
        h, w = label.shape
        nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        x, label = _pad_bottom_right(normalize(image, mean, std), label, size)
        h, w = label.shape
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        x, label = x[top:top + size, left:left + size], label[top:top + size, left:left + size]
        if rng.random() < 0.5:
            x, label = x[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(x), label.astype(np.int64)

    return transform


def voc_val_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) `voc_val_transform` resizes an image to before padding it to `size` x `size`: the
    longer side `size`, the aspect ratio kept. `twins predict` cuts its prediction to this, so both must
    compute it the same way."""
    longer = max(height, width)
    return max(1, int(round(height * size / longer))), max(1, int(round(width * size / longer)))


def voc_val_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """Validation (and `twins predict`): the longer side resized to `size` (image bilinear, label nearest), the
    aspect ratio kept, normalised, padded at the bottom / right to `size` x `size` (image with the mean
    colour, label with 255, so the padding is not scored). One `size` x `size` view of the whole image
    instead of semseg's multi-scale sliding-window test: a validation score each epoch, not the paper's."""

    def transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None):
        nh, nw = voc_val_size(*label.shape, size)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        x, label = _pad_bottom_right(normalize(image, mean, std), label, size)
        return x, label.astype(np.int64)

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

    def __init__(self, folder: ImageFolder | Food101 | Salicon | Cifar10 | Voc, batch_size: int, transform: Callable, *, shuffle: bool,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if drop_last and len(folder) < batch_size:
            raise DataError(f"{folder.root} {folder.split!r} has {len(folder)} images, not one full batch of "
                            f"{batch_size} (drop_last)")
        self.folder, self.batch_size, self.transform = folder, batch_size, transform
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self._orders: dict[int, np.ndarray] = {}

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
        if not self.shuffle:
            return np.arange(n)
        # `sample` asks once per sample: the permutation is drawn once per epoch (one dict, replaced whole, so
        # that loader threads never see another epoch's).
        cached = self._orders
        if epoch not in cached:
            cached = self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
        return cached[epoch]

    def sample(self, epoch: int, position: int):
        """`(x, y)` of the sample at `position` in `epoch`'s order, transformed with its own generator
        `default_rng([seed, epoch, position])`: what a sampler that splits an epoch's positions among
        data-parallel replicas (`torch_impl.distributed.PlanSampler`) loads one by one."""
        return self.folder.example(self.order(epoch)[position], self.transform,
                                   np.random.default_rng([self.seed, epoch, position]))

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """`(x, y)`: NHWC float32 images and int64 labels, float32 NHW1 maps (SALICON) or int64 NHW label
        maps (VOC)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a {len(self)}-batch epoch")
        positions = range(index * self.batch_size, min((index + 1) * self.batch_size, len(self.folder)))
        return self.collate([self.sample(epoch, k) for k in positions])

    @staticmethod
    def collate(samples) -> tuple[np.ndarray, np.ndarray]:
        """Samples `(x, y)` stacked into a batch as `batch` returns it."""
        images, targets = [x for x, _ in samples], [y for _, y in samples]
        if isinstance(targets[0], np.ndarray):  # saliency maps stay float; segmentation labels are class indices
            dtype = np.int64 if np.issubdtype(targets[0].dtype, np.integer) else np.float32
            return np.stack(images).astype(np.float32), np.stack(targets).astype(dtype)
        x = np.stack(images).astype(np.float32)
        if x.ndim == 5:  # two_views: (B, 2, H, W, C) -> 2B interleaved rows, sample k at 2k and 2k+1
            x = x.reshape(-1, *x.shape[2:])
        return x, np.asarray(targets, np.int64)

    def iterate(self, epoch: int = 0, workers: int = 0):
        """Batches 0, 1, ... of `epoch` in order, loaded `workers` batches ahead by threads (OpenCV releases
        the GIL while it decodes and resizes)."""
        if workers < 1:
            for index in range(len(self)):
                yield self.batch(epoch, index)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            pending = [pool.submit(self.batch, epoch, i) for i in range(min(workers, len(self)))]
            for index in range(len(self)):
                batch = pending.pop(0).result()
                if index + workers < len(self):
                    pending.append(pool.submit(self.batch, epoch, index + workers))
                yield batch

    def targets(self) -> np.ndarray:
        """The labels of every sample in epoch order (a plan that does not shuffle): what a classifier's
        predictions are scored against."""
        return np.asarray([label for _, label in self.folder.samples], np.int64)[self.order(0)]
