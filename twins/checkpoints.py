"""Checkpoint files and the key matching both weight loaders share.

`read(path)` turns a `.pth`/`.pt` (read with `weights_only=True`), `.safetensors` or `.npz` file, or a
TensorFlow checkpoint of a TF-slim network (`twins.tf_checkpoint`), into a `dict[str, np.ndarray]` in
torch layout and torch names; `write(path, state)` is its atomic inverse for the torch-layout formats.
A torch-layout `.safetensors` file is the interchange format between the twins.

`match(expected, given, exclude=...)` is the one place that decides which keys load, which are skipped,
missing, unexpected or mismatched; `torch_impl.weights.load_state_dict` and
`keras_impl.weights.load_torch_state_dict` both report through it, so their errors read the same.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from twins.formats import SUFFIXES, TORCH_SUFFIXES, CheckpointError, reason as _reason



class CheckpointMismatchError(CheckpointError):
    """Strict loading found missing, unexpected or mismatched keys; `report` lists them all."""

    def __init__(self, report: "LoadReport", model_name: str = "model"):
        self.report = report
        super().__init__(f"checkpoint does not fit {model_name}:\n{report.problems_text()}")


# ----------------------------------------------------------------------------------------------
# Reading and writing files


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _to_numpy(value, key: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; torch is already imported if we got one
        return value.detach().cpu().numpy()
    raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, expected a tensor")


def _unwrap(obj, path: Path) -> Mapping:
    """Accept a bare state_dict or the usual training-checkpoint wrappers around one."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    for wrapper in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not all(hasattr(v, "shape") for v in obj.values()):
            return inner
    return obj


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint file into `{torch key: numpy array}` (torch layout). A TensorFlow checkpoint
    is named by its prefix (which need not be a file), its `.index` or a `.data-*` shard."""
    from twins import tf_checkpoint  # numpy and re only; tensorflow is imported when a TF file is read

    path = Path(path)
    prefix = tf_checkpoint.prefix_of(path)
    if prefix is not None:
        return tf_checkpoint.read(prefix, path)
    suffix = _suffix(path)
    if suffix not in SUFFIXES and not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (nor {path.name}.index beside it, as a TensorFlow "
                                "checkpoint prefix has)")
    if suffix not in SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(SUFFIXES)}, or {tf_checkpoint.FORMAT}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if suffix in TORCH_SUFFIXES:
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            state = _unwrap(obj, path)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            state = load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except Exception as exc:  # every reader has its own exception zoo; name the file and format
        kind = {".safetensors": "safetensors", ".npz": "numpy .npz"}.get(suffix, "PyTorch")
        raise CheckpointError(
            f"{path}: could not read as a {kind} checkpoint (truncated or not a checkpoint?): {_reason(exc)}"
        ) from exc
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: key {key!r} is not a string")
        out[key] = _to_numpy(value, key)
    if not out:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return out


def atomic_path(path: Path):
    """A temporary sibling of `path`; rename it over `path` once it is completely written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync(path: Path, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Run `writer(tmp_path)` and rename the result over `path`; on any error nothing is left, and a
    reader never sees a half-written file. The file's data reaches the disk before the rename and the
    rename before we return (fsync of the file, then of its folder), so a crash leaves the old file or
    the new one under `path`, never an empty one."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent, directory=True)
    return path


def temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files `write_atomic` left in `folder` (only a killed process leaves one)."""
    return sorted(p for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def write(path: str | os.PathLike, state: Mapping[str, np.ndarray]) -> Path:
    """Write `{torch key: array}` as `.safetensors`, `.npz` or `.pth`, atomically."""
    path = Path(path)
    suffix = _suffix(path)
    arrays = {k: np.array(v, order="C") for k, v in state.items()}  # ascontiguousarray makes 0-d 1-d
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        return write_atomic(path, lambda tmp: save_file(arrays, str(tmp)))
    if suffix == ".npz":

        def save_npz(tmp: Path):
            with open(tmp, "wb") as f:  # np.savez on a path would append ".npz" to the temp name
                np.savez(f, **arrays)

        return write_atomic(path, save_npz)
    if suffix in TORCH_SUFFIXES:
        import torch

        tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        return write_atomic(path, lambda tmp: torch.save(tensors, tmp))
    raise CheckpointError(
        f"{path}: cannot write checkpoint format {suffix or '(no suffix)'!r}; "
        f"expected one of {', '.join(SUFFIXES)}"
    )




# ----------------------------------------------------------------------------------------------
# Key matching


def excluded(key: str, exclude: Iterable[str]) -> bool:
    """`exclude` holds module-path prefixes: "fc" matches "fc.weight" but not "fc2.weight"."""
    for prefix in exclude:
        prefix = prefix.rstrip(".")
        if key == prefix or key.startswith(prefix + "."):
            return True
    return False


def is_counter(key: str) -> bool:
    """BatchNorm's `num_batches_tracked`: bookkeeping that neither loader compares."""
    return key.endswith("num_batches_tracked")


def strip_data_parallel(state: Mapping) -> dict:
    """Drop the `module.` prefix that DataParallel / DistributedDataParallel checkpoints carry."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # excluded by prefix, in model or checkpoint
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    # key -> (shape the model expects, shape the checkpoint has), both in torch layout
    mismatched: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems_text(self, limit: int = 50) -> str:
        lines = []

        def section(title, items):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")

        section("missing keys (in the model, not in the checkpoint)", self.missing)
        section("unexpected keys (in the checkpoint, not in the model)", self.unexpected)
        section(
            "shape mismatches (model vs checkpoint)",
            [f"{k}: model {tuple(m)} vs checkpoint {tuple(c)}" for k, (m, c) in self.mismatched.items()],
        )
        return "\n".join(lines) if lines else "  no problems"

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)}, skipped {len(self.skipped)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, mismatched {len(self.mismatched)}"
        )

    def __str__(self) -> str:
        text = self.summary()
        if self.skipped:
            text += "\n  skipped (excluded): " + ", ".join(self.skipped)
        if not self.ok:
            text += "\n" + self.problems_text()
        return text


def match(
    expected: Mapping[str, tuple],
    given: Mapping[str, tuple],
    *,
    exclude: Iterable[str] = (),
    ignore: Callable[[str], bool] = lambda key: False,
) -> LoadReport:
    """Compare the model's `{key: shape}` with a checkpoint's; keys for which `ignore` is true are
    left out of every list (e.g. BatchNorm's `num_batches_tracked`)."""
    exclude = tuple(exclude)
    report = LoadReport()
    for key, shape in expected.items():
        if ignore(key):
            continue
        if excluded(key, exclude):
            report.skipped.append(key)
        elif key not in given:
            report.missing.append(key)
        elif tuple(given[key]) != tuple(shape):
            report.mismatched[key] = (tuple(shape), tuple(given[key]))
        else:
            report.loaded.append(key)
    for key in given:
        if key in expected or ignore(key):
            continue
        if excluded(key, exclude):
            report.skipped.append(key)
        else:
            report.unexpected.append(key)
    return report
