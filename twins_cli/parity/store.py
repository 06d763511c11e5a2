"""Tensors by key in a temporary folder, written as they are made and read back one at a time.

The training checks compare every parameter of two twins after each of two optimiser steps: the state before a
step, the torch twin's gradients and its updates are full copies of the model (pspnet: 49 M parameters, 0.37 GB a
float64 copy; vgg11_bn in `make parity`: 133 M, 1.06 GB). Held in memory they were most of a heavy job's peak;
here they cost disk (`tempfile`'s folder) and one tensor of memory at a time.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


class TensorStore:
    """`put(kind, key, array)` / `get(kind, key)`, `rename(kind, new)`; `view(kind, keys)` is a mapping for
    `compare.worst`. Close it (or use it as a context manager) to delete the folder."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="twins-parity-tensors-"))
        self.names: dict[tuple[str, str], Path] = {}
        self.written = 0  # file names are never reused: `drop` shrinks `names`

    def put(self, kind: str, key: str, array) -> None:
        self.written += 1
        path = self.dir / f"{self.written}.npy"
        np.save(path, np.asarray(array))
        old = self.names.pop((kind, key), None)
        if old is not None:
            old.unlink()
        self.names[(kind, key)] = path

    def get(self, kind: str, key: str):
        path = self.names.get((kind, key))
        return None if path is None else np.load(path)

    def keys(self, kind: str) -> list[str]:
        return [key for k, key in self.names if k == kind]

    def view(self, kind: str) -> "StoredView":
        return StoredView(self, kind)

    def rename(self, kind: str, new: str) -> None:
        """The tensors of `kind` become `new`'s (those `new` had go)."""
        self.drop(new)
        for name in [name for name in self.names if name[0] == kind]:
            self.names[(new, name[1])] = self.names.pop(name)

    def drop(self, kind: str) -> None:
        for name in [name for name in self.names if name[0] == kind]:
            self.names.pop(name).unlink()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.names.clear()

    def __enter__(self) -> "TensorStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoredView:
    """The tensors of one kind, read when asked for (what `compare.worst` takes)."""

    def __init__(self, store: TensorStore, kind: str):
        self.store, self.kind = store, kind

    def get(self, key, default=None):
        value = self.store.get(self.kind, key)
        return default if value is None else value
