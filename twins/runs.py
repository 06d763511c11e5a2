"""The run directory both trainers write, in one format, and the recipe settings they share.

    RUN/config.json        what was asked for (model, framework, data, hyperparameters, classes)
    RUN/classes.txt        one class name per line, label order (what `twins predict --classes` reads)
    RUN/history.json       per epoch and phase: loss, accuracy, seconds, samples/s, learning rate, and
                           the per-step training losses; the best epoch and its val accuracy
    RUN/best.safetensors   the best-val-accuracy weights in torch layout (restores into either framework)
    RUN/resume.json        the last complete epoch and the folder holding its resume state
    RUN/resume-NNNN/       weights, optimiser state and RNG state after epoch NNNN (framework files)
    RUN/tensorboard/       TensorBoard scalars (loss, accuracy, learning rate per phase and epoch)

Every JSON and weights file is written atomically (temporary file, fsync, rename). A resume folder is
complete before `resume.json` names it, so a process killed at any moment leaves a run that resumes
from its last complete epoch; since every batch is a pure function of (seed, epoch, index) and the RNG
state is saved, the resumed run continues with the losses an uninterrupted run would have had.
TensorBoard event files are append-only streams, not atomic; a resumed run asks TensorBoard to purge
the steps it repeats.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from twins import checkpoints


@dataclass
class Recipe:
    """The seed's `train_model` settings (SPEC.md section 2) and what a run adds to them."""

    model: str
    framework: str
    data: str
    epochs: int = 15
    batch_size: int = 8
    lr: float = 0.001
    momentum: float = 0.9
    feature_extract: bool = False
    seed: int = 0
    workers: int = 2
    input_size: int = 224
    aux_heads: tuple[str, ...] = ()
    aux_weight: float = 0.4
    backend: str | None = None
    weights: str | None = None
    exclude: tuple[str, ...] = ()
    classes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["aux_heads"], d["exclude"] = list(self.aux_heads), list(self.exclude)
        return d


def write_json(path: Path, payload) -> Path:
    text = json.dumps(payload, indent=1) + "\n"
    return checkpoints.write_atomic(path, lambda tmp: tmp.write_text(text))


class RunDir:
    """One training run's folder. `start()` for a new run refuses a folder that already holds one (use
    `--resume`, or another `--out`); `resume_state()` reads what a resumed run continues from."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- files ---------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.json"

    @property
    def best_path(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def classes_path(self) -> Path:
        return self.path / "classes.txt"

    @property
    def tensorboard_path(self) -> Path:
        return self.path / "tensorboard"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def start(self, recipe: Recipe) -> None:
        if self.exists():
            raise FileExistsError(f"{self.path} already holds a run (config.json); resume it with --resume "
                                  "or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, recipe.to_json())
        text = "".join(f"{name}\n" for name in recipe.classes)
        checkpoints.write_atomic(self.classes_path, lambda tmp: tmp.write_text(text))

    def config(self) -> dict:
        if not self.exists():
            raise FileNotFoundError(f"{self.path} holds no run (no config.json)")
        return json.loads(self.config_path.read_text())

    def history(self) -> dict:
        if not self.history_path.is_file():
            return {"epochs": [], "best_epoch": None, "best_val_acc": None}
        return json.loads(self.history_path.read_text())

    def write_history(self, history: dict) -> None:
        write_json(self.history_path, history)

    # -- resume state ----------------------------------------------------------------------------

    def resume_state(self) -> dict | None:
        """`{"epoch": last complete epoch, "dir": Path, ...}`, or None before the first epoch ends."""
        marker = self.path / "resume.json"
        if not marker.is_file():
            return None
        state = json.loads(marker.read_text())
        state["dir"] = self.path / state["dir"]
        if not state["dir"].is_dir():
            raise FileNotFoundError(f"{marker} names {state['dir']}, which is missing")
        return state

    def save_resume(self, epoch: int, writer, extra: dict) -> None:
        """`writer(folder)` writes the framework's resume files into a fresh folder; once it returns,
        `resume.json` is switched to it atomically and the previous folder removed."""
        name = f"resume-{epoch:04d}"
        folder = self.path / name
        if folder.exists():
            shutil.rmtree(folder)
        partial = self.path / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        writer(partial)
        os.replace(partial, folder)
        previous = self.resume_state()
        write_json(self.path / "resume.json", {"epoch": epoch, "dir": name, **extra})
        if previous is not None and previous["dir"] != folder:
            shutil.rmtree(previous["dir"], ignore_errors=True)


def natural_order(names) -> list[str]:
    """Parameter names sorted by module path with numbers compared as numbers (`layer2` before
    `layer10`), `weight` before `bias` within a module: the one order both trainers print and log the
    parameters that train in, whatever order their framework keeps them in."""
    leaf_rank = {"weight": 0, "bias": 1}

    def key(name: str):
        path, _, leaf = name.rpartition(".")
        parts = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", path)]
        return parts, leaf_rank.get(leaf, 2), leaf

    return sorted(names, key=key)


def new_history(recipe: Recipe) -> dict:
    return {"model": recipe.model, "framework": recipe.framework, "backend": recipe.backend,
            "epochs": [], "best_epoch": None, "best_val_acc": None}


def epoch_record(epoch: int, lr: float, train: dict, val: dict) -> dict:
    """One epoch in history.json; `train` / `val` hold loss, acc, samples, seconds (and train's
    step_losses)."""
    for phase in (train, val):
        phase["samples_per_sec"] = phase["samples"] / phase["seconds"] if phase["seconds"] > 0 else None
    return {"epoch": epoch, "lr": lr, "train": train, "val": val}


def record_epoch(history: dict, record: dict) -> bool:
    """Append `record`; returns True when its val accuracy is the best so far (strictly better, as the
    seed's `epoch_acc > best_acc`, so the earliest best epoch is kept)."""
    history["epochs"].append(record)
    acc = record["val"]["acc"]
    if history["best_val_acc"] is None or acc > history["best_val_acc"]:
        history["best_val_acc"], history["best_epoch"] = acc, record["epoch"]
        return True
    return False


class Scalars:
    """TensorBoard scalars through tensorboardX (no TensorFlow needed): `train/loss`, `val/acc`, `lr`."""

    def __init__(self, run: RunDir, purge_step: int | None = None):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run.tensorboard_path), purge_step=purge_step)

    def epoch(self, record: dict) -> None:
        step = record["epoch"]
        for phase in ("train", "val"):
            self.writer.add_scalar(f"{phase}/loss", record[phase]["loss"], step)
            self.writer.add_scalar(f"{phase}/acc", record[phase]["acc"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
