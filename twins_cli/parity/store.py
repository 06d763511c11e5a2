"""Tensors by key in a temporary folder, written as they are made and read back one at a time.

The training checks compare every parameter of two twins after each of two optimiser steps: the state before a
step, the torch twin's gradients and its updates are full copies of the model (pspnet: 49 M parameters, 0.37 GB a
float64 copy; vgg11_bn in `make parity`: 133 M, 1.06 GB). Held in memory they were most of a heavy job's peak;
here they cost disk (`tempfile`'s folder) and one tensor of memory at a time.

`Recordings`: the torch twin's two recorded steps are the same whichever Keras backend they are compared with, so
the workers of one run (`RECORDINGS_ENV`: a folder they share) record them once per model and read that recording.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

# A folder shared by the parity workers of one run (set by `run_parity`, and by `make test` for its three passes):
# the torch twin's training recordings, one folder per model and setting (`Recordings`).
RECORDINGS_ENV = "TWINS_PARITY_RECORDINGS"


class TensorStore:
    """`put(kind, key, array)` / `get(kind, key)`, `rename(kind, new)`; `view(kind, keys)` is a mapping for
    `compare.worst`. Close it (or use it as a context manager) to delete the folder."""

    def __init__(self, folder: str | Path | None = None):
        """In a new temporary folder, or in `folder` (created)."""
        if folder is None:
            self.dir = Path(tempfile.mkdtemp(prefix="twins-parity-tensors-"))
        else:
            self.dir = Path(folder)
            self.dir.mkdir(parents=True)
        self.names: dict[tuple[str, str], Path] = {}
        self.written = 0  # file names are never reused: `drop` shrinks `names`
        self.read_only = False

    def put(self, kind: str, key: str, array) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.dir} is a finished recording: nothing is written to it")
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
        """Forget the tensors of `kind` (and delete their files, unless this is a finished recording that other
        processes read too)."""
        for name in [name for name in self.names if name[0] == kind]:
            path = self.names.pop(name)
            if not self.read_only:
                path.unlink()

    def close(self) -> None:
        if not self.read_only:
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


class Recordings:
    """The torch twin's recorded training steps, shared by the parity workers of one run through a folder (the
    environment's `RECORDINGS_ENV`; without it each recording is the caller's alone, as before).

    `find(key)`: a finished recording (a read-only `TensorStore` and what was saved beside it), or None.
    `start(key)`: a new store to record into, in a folder of this process's own beside the finished ones;
    `finish(key, store, extra)` saves `extra` (JSON) and the store's names, then renames the folder into place,
    so a reader sees a whole recording or none. Two workers recording the same key at once both finish; the
    second rename fails and its folder goes (the first one's is the same computation)."""

    def __init__(self, folder: str | None = None):
        folder = folder if folder is not None else os.environ.get(RECORDINGS_ENV)
        self.dir = Path(folder) if folder else None

    def find(self, key: str) -> tuple[TensorStore, dict] | None:
        if self.dir is None:
            return None
        manifest = self.dir / key / "manifest.json"
        if not manifest.is_file():
            return None
        saved = json.loads(manifest.read_text())
        store = TensorStore.__new__(TensorStore)  # over a finished folder: nothing made, nothing written
        store.dir, store.written, store.read_only = manifest.parent, 0, True
        store.names = {(kind, name): manifest.parent / file for kind, name, file in saved["names"]}
        return store, saved["extra"]

    def start(self, key: str) -> TensorStore:
        if self.dir is None:
            return TensorStore()
        return TensorStore(self.dir / f".{key}.{os.getpid()}")

    def finish(self, key: str, store: TensorStore, extra: dict) -> TensorStore:
        """`store`, finished: read-only in its final place when it is shared, else as it was."""
        if self.dir is None:
            return store
        names = [[kind, name, path.name] for (kind, name), path in store.names.items()]
        (store.dir / "manifest.json").write_text(json.dumps({"names": names, "extra": extra}))
        try:
            os.rename(store.dir, self.dir / key)
        except OSError:  # another worker finished the same recording first (else: the rename's own error)
            shutil.rmtree(store.dir, ignore_errors=True)
            if self.find(key) is None:
                raise
        return self.find(key)[0]  # whichever finished first: the same computation, read from its place
