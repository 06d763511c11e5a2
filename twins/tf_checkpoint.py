"""TensorFlow checkpoints of TF-slim networks, read into their twins' torch keys and torch layout.

A `tf.compat.v1.train.Saver` writes `PREFIX.index` + `PREFIX.data-00000-of-00001` (format V2); the
TF-slim model zoo's 2016 files (`vgg_19.ckpt` from `vgg_19_2016_08_28.tar.gz`) are one file in the
older format V1. `tf.train.load_checkpoint` reads both from the prefix; tensorflow is imported only
when a checkpoint is one, so the rest of `twins` does not need it.

A slim variable `vgg_19/conv1/conv1_1/weights` [3,3,3,64] (HWIO) becomes the twin's
`conv1.conv1_1.weight` [64,3,3,3] (OIHW): the network scope goes, `weights`/`biases` become
`weight`/`bias`, `/` becomes `.`, and 4-D kernels are transposed. What a training run saves besides
the model (the step counter, optimiser slots, moving averages) is skipped; any other variable that
does not map is an error that lists it, rather than a key the strict loaders would report as
unexpected without saying where it came from.
"""
from __future__ import annotations

import glob
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twins.formats import SUFFIXES, CheckpointError, reason as _reason

FORMAT = "a TensorFlow checkpoint (a PREFIX with PREFIX.index beside it, or a V1 checkpoint file)"
INSTALL = "pip install 'twins[tensorflow]'"
# The last 8 bytes of a TensorFlow table file: a V1 checkpoint, or a V2 checkpoint's .index.
_TABLE_MAGIC = 0xDB4775248B80FB57
_DATA_SHARD = re.compile(r"(.+)\.data-\d{5}-of-\d{5}")
LISTED = 20


@dataclass(frozen=True)
class SlimNetwork:
    """Which variables below a TF-slim network's scope are parameters of its twin."""

    twin: str  # the registry name of the model the keys are for
    parameters: str  # regex over the names below the scope
    ignore: tuple[str, ...] = ()  # names below the scope that the published files carry, not layers


_LEAVES = {"weights": "weight", "biases": "bias"}  # slim's names for a layer's variables -> torch's
# slim.conv2d without BatchNorm: `conv3/conv3_2/weights`, `fc6/biases`, ...
_VGG = r"(?:conv([1-5])/conv\1_[1-4]|fc[678])/(?:weights|biases)"
# The zoo's vgg files carry `mean_rgb`, the ImageNet mean: preprocessing, and the seed does not use it.
# Another slim VGG is one line here, e.g. "vgg_16": SlimNetwork("vgg16_slim", _VGG, ("mean_rgb",)).
NETWORKS = {
    "vgg_19": SlimNetwork("vgg19_slim", _VGG, ("mean_rgb",)),
}
# Saved beside the model by a tf.compat.v1 training run: the step counter and Adam's beta powers at the
# top level; slots sit below their variable's name (`.../weights/Momentum`, `/Adam`, `/Adam_1`,
# `/RMSProp`, `/ExponentialMovingAverage`), see `_bookkeeping`.
_TOP_LEVEL = re.compile(r"global_step|beta[12]_power(?:_\d+)?")


def prefix_of(path: Path) -> Path | None:
    """The checkpoint prefix if `path` names a TensorFlow checkpoint (its prefix, `.index`, a `.data-*`
    shard, or a V1 file), else None. Only file names and a V1 file's last bytes are looked at."""
    if path.name.endswith(".index"):
        return path.with_name(path.name[: -len(".index")])
    shard = _DATA_SHARD.fullmatch(path.name)
    if shard:
        return path.with_name(shard.group(1))
    if path.with_name(path.name + ".index").is_file():
        return path
    if path.suffix.lower() not in SUFFIXES and _is_table(path):
        return path
    return None


def _is_table(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-8, os.SEEK_END)
            return struct.unpack("<Q", f.read(8))[0] == _TABLE_MAGIC
    except OSError:  # missing, a folder, or shorter than a footer
        return False


def read(prefix: Path, shown: Path) -> dict[str, np.ndarray]:
    """Read the checkpoint at `prefix` into `{torch key: array}`; errors name `shown`, the path given."""
    index = prefix.with_name(prefix.name + ".index")
    if not (index.is_file() or prefix.is_file()):
        raise FileNotFoundError(f"checkpoint not found: {index}")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise CheckpointError(
            f"{shown}: reading a TensorFlow checkpoint needs tensorflow; install the extra: {INSTALL}"
        ) from exc
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = sorted(reader.get_variable_to_shape_map())
    except Exception as exc:  # tensorflow's errors do not say which file
        raise _unreadable(shown, index if index.is_file() else prefix, exc) from exc
    out = {}
    for name, key in torch_keys(names, shown).items():
        try:
            value = reader.get_tensor(name)
        except Exception as exc:
            shards = sorted(prefix.parent.glob(f"{glob.escape(prefix.name)}.data-*")) or [prefix]
            raise _unreadable(shown, ", ".join(map(str, shards)), exc, name) from exc
        out[key] = np.ascontiguousarray(value.transpose(3, 2, 0, 1)) if value.ndim == 4 else value
    return out


def _unreadable(shown: Path, files, exc: Exception, variable: str = "") -> CheckpointError:
    where = f"{variable} in {files}" if variable else str(files)
    return CheckpointError(
        f"{shown}: could not read as a TensorFlow checkpoint (truncated or not a checkpoint?): "
        f"{where}: {_reason(exc)}"
    )


def _bookkeeping(name: str, names: set[str]) -> bool:
    return bool(_TOP_LEVEL.fullmatch(name)) or name.rpartition("/")[0] in names


def torch_keys(names: list[str], shown: Path) -> dict[str, str]:
    """`{TF variable name: torch key}` for the model variables of one supported network in `names`;
    a CheckpointError lists every variable that is neither that nor bookkeeping."""
    present = set(names)
    names = [n for n in names if not _bookkeeping(n, present)]
    supported = ", ".join(f"{scope} ({net.twin})" for scope, net in NETWORKS.items())
    found = sorted({n.partition("/")[0] for n in names} & NETWORKS.keys())
    if len(found) != 1:
        what = f"several networks ({', '.join(found)})" if found else "no network this reader maps"
        raise CheckpointError(
            f"{shown}: a TensorFlow checkpoint of {what}; supported TF-slim networks: {supported}; "
            f"the variables that did not map:\n{_listing(names)}"
        )
    scope = found[0]
    net = NETWORKS[scope]
    keys, unmapped = {}, []
    for name in names:
        inner = name[len(scope) + 1:] if name.startswith(scope + "/") else None
        if inner in net.ignore:
            continue
        if inner is None or not re.fullmatch(net.parameters, inner):
            unmapped.append(name)
            continue
        path, _, leaf = inner.rpartition("/")
        keys[name] = f"{path.replace('/', '.')}.{_LEAVES.get(leaf, leaf)}"
    if unmapped:
        raise CheckpointError(
            f"{shown}: a TensorFlow checkpoint of {scope} with variables that do not map to {net.twin} "
            f"(its parameters are {scope}/{net.parameters}; supported TF-slim networks: {supported}); "
            f"not mapped ({len(unmapped)}):\n{_listing(unmapped)}"
        )
    return keys


def _listing(names: list[str]) -> str:
    if not names:
        return "  (none)"
    lines = [f"  {n}" for n in names[:LISTED]]
    if len(names) > LISTED:
        lines.append(f"  ... and {len(names) - LISTED} more")
    return "\n".join(lines)
