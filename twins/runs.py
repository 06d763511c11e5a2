"""The run directory both trainers write, in one format, and the recipe settings they share.

    RUN/config.json        what was asked for (model, framework, data, hyperparameters, classes)
    RUN/classes.txt        one class name per line, label order (what `twins predict --classes` reads)
    RUN/history.json       per epoch and phase: loss and the task's metrics (accuracy; a saliency map's
                           CC, KLD, SIM on val), seconds, samples/s, learning rate, and the per-step
                           training losses and rates; the val metric that picks the best epoch (`score`),
                           the best epoch and its value; the val evaluations made every `val_every` steps
    RUN/best.safetensors   the best epoch's weights in torch layout (restores into either framework)
    RUN/resume.json        where training continues (epoch, batch, step) and the folder holding the state
    RUN/resume-SSSSSSSS/   weights, optimiser state and RNG state after step SSSSSSSS (framework files)
    RUN/tensorboard/       TensorBoard scalars: per epoch loss, metrics and learning rate per phase; per
                           step (`iteration/...`) the loss every `log_every` steps, the learning rate and
                           the val score every `val_every` steps

Every JSON and weights file is written atomically (temporary file, fsync, rename). A resume folder is
complete before `resume.json` names it, so a process killed at any moment leaves a run that resumes
from its last checkpoint (every epoch end, and every `checkpoint_every` steps); since every batch is a
pure function of (seed, epoch, index), the RNG state is saved and so is the running tally of a
half-done epoch, the resumed run continues with the losses an uninterrupted run would have had.
TensorBoard event files are append-only streams, not atomic; a resumed run asks TensorBoard to purge
the steps it repeats.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from twins import checkpoints, registry, tasks
from twins.optim import SCHEDULES


@dataclass
class Recipe:
    """The seed's `train_model` settings (SPEC.md section 2) and what a run adds to them; the defaults
    are the fine-tuning zoo's, `RECIPES` holds another seed's per model (`recipe_defaults`)."""

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
    # Batch size of the val phase (None: `batch_size`).
    val_batch_size: int | None = None
    # Linear decay of the rate from `lr` to `lr_end` over all steps (`twins.optim`); None: constant.
    lr_end: float | None = None
    # L2 on every conv kernel (`twins.optim.l2_keys`), `weight_decay * sum(w**2) / 2` in the loss.
    weight_decay: float = 0.0
    # Every N steps (0: never): print the step's loss, evaluate on val, write a resume checkpoint.
    log_every: int = 0
    val_every: int = 0
    checkpoint_every: int = 0
    # Transforms: "imagenet" (RandomResizedCrop / Resize+CenterCrop, ImageNet mean/std; seed 001) or
    # "food101" (random / central square crop with `margin`, area resize, pixels in [0, 1]; seed 002).
    preprocess: str = "imagenet"
    margin: int = 10
    # Training batches of `batch_size` only (seed 002's `drop_remainder=True`); val keeps every image.
    drop_last: bool = False
    # "sgd" (torch's momentum form, `momentum`) or "adam" (torch's Adam, `betas`; seed 000).
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    # Top-level modules whose parameters do not train (saliency_unet; None: the model's default set).
    frozen: tuple[str, ...] | None = None
    # The shape of the decay to `lr_end`: "linear" (seed 002's polynomial decay) or "cosine" (SimCLR's).
    schedule: str = "linear"
    # A run directory (either framework) whose best weights start this run (`twins_cli.train.init_from`):
    # simclr_sl fine-tuned or probed from a simclr_ssl run's encoder.
    init_from: str | None = None
    # The contrastive task (simclr_ssl): NT-Xent's temperature, and the kNN monitor's k and temperature.
    temperature: float = 0.5
    knn_k: int = 200
    knn_t: float = 0.1
    # Data-parallel training (`twins.distributed`): BatchNorm statistics over the global batch on every replica
    # (torch: SyncBatchNorm; Keras on jax computes them so by itself), and the replicas the run trains on (torch
    # processes under torchrun, or Keras devices; a resumed run may take another number).
    sync_bn: bool = False
    replicas: int = 1

    def to_json(self) -> dict:
        d = asdict(self)
        d["aux_heads"], d["exclude"], d["betas"] = list(self.aux_heads), list(self.exclude), list(self.betas)
        d["frozen"] = None if self.frozen is None else list(self.frozen)
        return d

    def check(self) -> None:
        """Refuse settings no run can use, naming the option and the value."""
        problems = [f"--{name.replace('_', '-')} must be at least {low}, got {value}"
                    for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1),
                                             ("val_batch_size", 1 if self.val_batch_size is None
                                              else self.val_batch_size, 1),
                                             ("log_every", self.log_every, 0), ("val_every", self.val_every, 0),
                                             ("checkpoint_every", self.checkpoint_every, 0),
                                             ("margin", self.margin, 0))
                    if value < low]
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.lr_end is not None and not 0 <= self.lr_end <= self.lr:
            problems.append(f"--lr-end must be between 0 and --lr ({self.lr}), got {self.lr_end}")
        if not 0 <= self.momentum < 1:
            problems.append(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            problems.append(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if self.preprocess not in PREPROCESS:
            problems.append(f"--preprocess must be one of {', '.join(PREPROCESS)}, got {self.preprocess!r}")
        if self.optimizer not in ("sgd", "adam"):
            problems.append(f"--optimizer must be sgd or adam, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.temperature > 0:
            problems.append(f"--temperature must be positive, got {self.temperature}")
        if self.knn_k < 1:
            problems.append(f"--knn-k must be at least 1, got {self.knn_k}")
        if not self.knn_t > 0:
            problems.append(f"--knn-t must be positive, got {self.knn_t}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"--betas must be two numbers in [0, 1), got {', '.join(map(str, self.betas))}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_json(cls, config: dict) -> "Recipe":
        config = dict(config)
        config["aux_heads"], config["exclude"] = tuple(config["aux_heads"]), tuple(config["exclude"])
        config["betas"] = tuple(config.get("betas", (0.9, 0.999)))
        if config.get("frozen") is not None:
            config["frozen"] = tuple(config["frozen"])
        return cls(**config)


# Seed 002 (SPEC.md section 4): VGG-19 on Food-101. The seed saves a checkpoint every 600 s; a step
# count keeps the run reproducible (500: one per val evaluation, the step before it).
FOOD101_RECIPE = dict(epochs=20, batch_size=64, val_batch_size=128, lr=1e-3, lr_end=1e-7, momentum=0.9,
                      weight_decay=5e-4, log_every=10, val_every=500, checkpoint_every=500, preprocess="food101",
                      margin=10, drop_last=True)
# Seed 000 (SPEC.md section 3): the saliency U-Net on SALICON. Its train loader drops the last partial batch;
# val keeps every image here (the seed validates on one batch by eye).
SALIENCY_RECIPE = dict(epochs=5, batch_size=4, lr=1e-3, optimizer="adam", betas=(0.9, 0.99), preprocess="salicon",
                       drop_last=True)
# Seed 003 (SPEC.md section 5) names the model, the loss, the augmentation and the SSL batch (256 images, 512
# views) but no optimiser, rate or length. These follow the reproduction the seed's `nt_xent` comes from
# (SimCLR-CIFAR10: SGD momentum 0.9, rate 0.3 x batch / 256, cosine annealing; it adds Nesterov and weight decay
# 1e-6 on every tensor, left out here) and the usual CIFAR-10 supervised recipe for the SL model (rate 0.1,
# random 32x32 crop of the 4-px padded image, flip). 100 epochs each; the seed's 86% / 88.1% come from
# longer runs.
SIMCLR_SSL_RECIPE = dict(epochs=100, batch_size=256, val_batch_size=512, lr=0.3, lr_end=0.0, schedule="cosine",
                         momentum=0.9, preprocess="simclr", drop_last=True)
SIMCLR_SL_RECIPE = dict(epochs=100, batch_size=256, val_batch_size=512, lr=0.1, lr_end=0.0, schedule="cosine",
                        momentum=0.9, preprocess="cifar")
# Seed 004 (SPEC.md section 6): PSPNet. The seed gives the model and the loss; the recipe is its authors'
# (hszhao/semseg, config/voc2012/voc2012_pspnet50.yaml): SGD momentum 0.9, rate 0.01 with the poly decay
# (power 0.9) to 0, weight decay 1e-4, aux weight 0.4, batch 16, 50 epochs, random scale 0.5-2 / crop 473 /
# flip, the train loader dropping its last partial batch. Two of semseg's settings are not taken: it trains
# the new layers (ppm, cls, aux) at 10x the rate and decays every tensor (BatchNorm and biases too); here one
# rate for all and the L2 term on the conv kernels (`twins.optim.l2_keys`), as every recipe of the project.
PSPNET_RECIPE = dict(epochs=50, batch_size=16, lr=0.01, lr_end=0.0, schedule="poly", momentum=0.9, weight_decay=1e-4,
                     aux_weight=0.4, preprocess="voc", drop_last=True)
RECIPES: dict[str, dict] = {"vgg19_slim": FOOD101_RECIPE, "saliency_unet": SALIENCY_RECIPE,
                            "simclr_ssl": SIMCLR_SSL_RECIPE, "simclr_sl": SIMCLR_SL_RECIPE, "pspnet": PSPNET_RECIPE}
# The transforms a recipe can ask for (twins.data): the zoo's, the Food-101 seed's, the saliency seed's, the
# SimCLR seed's two views (its test transform for the kNN monitor), the CIFAR-10 supervised one and PSPNet's
# (random scale / crop / flip of image and label map together; val: resized and padded with 255).
PREPROCESS = ("imagenet", "food101", "salicon", "simclr", "cifar", "voc")


def recipe_defaults(model: str) -> dict:
    """The settings `twins train MODEL` starts from: the model's seed recipe, else the zoo's."""
    base = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
    return {**base, **RECIPES.get(model, {})}


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
            return {"epochs": [], "evals": []}
        return json.loads(self.history_path.read_text())

    def write_history(self, history: dict) -> None:
        write_json(self.history_path, history)

    # -- resume state ----------------------------------------------------------------------------

    def resume_state(self) -> dict | None:
        """Where training continues, or None before the first checkpoint: `{"epoch": E, "batch": B,
        "step": S, "dir": Path, "meter": the half-done epoch's tally or None, ...}`; batch B of epoch E
        is the next one to train, S the number of steps done."""
        marker = self.path / "resume.json"
        if not marker.is_file():
            return None
        state = json.loads(marker.read_text())
        if "step" not in state:
            raise ValueError(f"{marker} was written by an earlier twins (a resume point per epoch, Keras' own SGD "
                             "state) and cannot be resumed by this one; its best.safetensors holds the best "
                             "weights: start a new run from them with --weights")
        state["dir"] = self.path / state["dir"]
        if not state["dir"].is_dir():
            raise FileNotFoundError(f"{marker} names {state['dir']}, which is missing")
        return state

    def save_resume(self, position: "Position", writer, extra: dict) -> None:
        """`writer(folder)` writes the framework's resume files into a fresh folder; once it returns,
        `resume.json` is switched to it atomically and the previous folder removed."""
        name = f"resume-{position.step:08d}"
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
        write_json(self.path / "resume.json", {**position.to_json(), "dir": name, **extra})
        if previous is not None and previous["dir"] != folder:
            shutil.rmtree(previous["dir"], ignore_errors=True)

    def history_at(self, state: dict, recipe: Recipe) -> dict:
        """history.json as it was when `state` was saved: a process killed between writing the history
        and the next checkpoint leaves records the resumed run will make again. (An eval's `step` is the
        0-based index of the step before it, `state["step"]` the count of steps done.)"""
        history = {**new_history(recipe), **self.history()}
        history["epochs"] = [e for e in history["epochs"] if e["epoch"] < state["epoch"]]
        history["evals"] = [e for e in history["evals"] if e["step"] < state["step"]]
        score = history["score"]
        best = [e for e in history["epochs"] if e["val"][score] == max(r["val"][score] for r in history["epochs"])]
        history["best_epoch"] = best[0]["epoch"] if best else None
        history["best_score"] = best[0]["val"][score] if best else None
        return history


@dataclass
class Position:
    """Where a run is: batch `batch` of epoch `epoch` is the next to train, `step` steps are done, and
    `meter` is the half-done epoch's tally (None at an epoch boundary)."""

    epoch: int
    batch: int
    step: int
    meter: dict | None = None

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "meter": self.meter}

    @classmethod
    def start(cls, state: dict | None) -> "Position":
        if state is None:
            return cls(0, 0, 0)
        return cls(state["epoch"], state["batch"], state["step"], state.get("meter"))

    def describe(self, recipe: Recipe, steps_per_epoch: int) -> str:
        if self.batch == 0:
            return f"after epoch {self.epoch}/{recipe.epochs}"
        return (f"in epoch {self.epoch + 1}/{recipe.epochs} after batch {self.batch}/{steps_per_epoch} "
                f"(step {self.step})")


class EpochMeter:
    """The running tally of a train phase: loss and (for a classifier) accuracy weighted by batch size, the
    per-step losses and rates, and the seconds spent. Both trainers keep one; it is saved with a mid-epoch
    checkpoint so a resumed epoch reports what an uninterrupted one would. `metrics` is the task's
    `train_metrics`: ("acc",) counts correct predictions, () the loss alone."""

    def __init__(self, state: dict | None = None, metrics: tuple[str, ...] = ("acc",)):
        self.metrics = tuple(metrics)
        state = state or {}
        self.loss_sum = state.get("loss_sum", 0.0)
        self.correct = state.get("correct", 0)
        self.seen = state.get("seen", 0)
        self.step_losses = list(state.get("step_losses", []))
        self.step_lrs = list(state.get("step_lrs", []))
        self.seconds_before = state.get("seconds", 0.0)
        self.start, self._seen_at_start = time.perf_counter(), self.seen

    def add(self, loss: float, correct: int | None, size: int, lr: float) -> None:
        self.loss_sum += loss * size
        self.correct += correct or 0
        self.seen += size
        self.step_losses.append(loss)
        self.step_lrs.append(lr)

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (a val evaluation, a checkpoint) is not training time: neither the epoch's
        seconds nor the images/s count it."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - begin

    def running(self) -> dict:
        """What a progress bar shows: running loss, accuracy (a classifier's) and images/s of this process."""
        elapsed = time.perf_counter() - self.start
        out = {"loss": self.loss_sum / max(self.seen, 1)}
        if "acc" in self.metrics:
            out["acc"] = self.correct / max(self.seen, 1)
        return {**out, "img_s": (self.seen - self._seen_at_start) / elapsed if elapsed > 0 else 0.0}

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen,
                "step_losses": self.step_losses, "step_lrs": self.step_lrs, "seconds": self.seconds}

    def result(self) -> dict:
        out = {"loss": self.loss_sum / max(self.seen, 1)}
        if "acc" in self.metrics:
            out["acc"] = self.correct / max(self.seen, 1)
        return {**out, "samples": self.seen, "seconds": self.seconds, "step_losses": self.step_losses,
                "step_lrs": self.step_lrs}


def due(every: int, step: int) -> bool:
    """The seed's `iteration % N == 0` on the 0-based index of the step just done (so step 0 logs)."""
    return every > 0 and step % every == 0


def step_line(step: int, total: int, loss: float, lr: float) -> str:
    """The seed's `[iteration / train_iters] Loss = ...` line, with the rate."""
    return f"[{step} / {total}] loss {loss:.4f} lr {lr:.3g}"


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


def task_of(recipe: Recipe) -> tasks.Task:
    return tasks.get(registry.get(recipe.model).task)


def new_history(recipe: Recipe) -> dict:
    """`score` names the val metric that picks the best epoch (`acc` for a classifier, `cc` for a saliency
    map); `best_score` is its value at `best_epoch`."""
    return {"model": recipe.model, "framework": recipe.framework, "backend": recipe.backend,
            "epochs": [], "evals": [], "score": task_of(recipe).score, "best_epoch": None, "best_score": None}


def record_eval(history: dict, step: int, epoch: int, val: dict) -> None:
    """A val evaluation made every `val_every` steps (after step `step`, 0-based, the seed's count): its
    loss and metrics."""
    scores = {k: v for k, v in val.items() if k not in ("samples", "seconds")}
    history["evals"].append({"step": step, "epoch": epoch, **scores})


def epoch_record(epoch: int, lr: float, train: dict, val: dict) -> dict:
    """One epoch in history.json; `train` / `val` hold loss, the task's metrics, samples, seconds (and train's
    step_losses and step_lrs); `lr` is the rate of the epoch's first step."""
    for phase in (train, val):
        phase["samples_per_sec"] = phase["samples"] / phase["seconds"] if phase["seconds"] > 0 else None
    return {"epoch": epoch, "lr": lr, "train": train, "val": val}


def scores_text(phase: dict) -> str:
    """`loss 0.1234 acc 0.5000` (or `loss .. cc .. kld .. sim ..`) of a phase's result."""
    return " ".join(f"{k} {phase[k]:.4f}" for k in ("loss", *METRIC_ORDER) if k in phase)


# The metrics a phase result may hold, in the order lines and TensorBoard list them.
METRIC_ORDER = ("miou", "acc", "cc", "kld", "sim", "knn")


def epoch_line(record: dict, epochs: int, history: dict) -> str:
    """The line both trainers print at the end of an epoch."""
    train, val = record["train"], record["val"]
    return (f"epoch {record['epoch'] + 1}/{epochs}: train {scores_text(train)} ({train['samples_per_sec']:.1f} "
            f"img/s) | val {scores_text(val)}" + (" (best)" if history["best_epoch"] == record["epoch"] else ""))


def best_line(history: dict, run: "RunDir") -> str:
    """The line both trainers end with."""
    return (f"best val {history['score']} {history['best_score']:.4f} at epoch {history['best_epoch'] + 1}; "
            f"weights in {run.best_path}")


def record_epoch(history: dict, record: dict) -> bool:
    """Append `record`; returns True when its val score (`history["score"]`) is the best so far (strictly
    better, as the seed's `epoch_acc > best_acc`, so the earliest best epoch is kept)."""
    history["epochs"].append(record)
    value = record["val"][history["score"]]
    if history["best_score"] is None or value > history["best_score"]:
        history["best_score"], history["best_epoch"] = value, record["epoch"]
        return True
    return False


class EventFile:
    """One TensorBoard event file, written in the calling thread. tensorboardX's SummaryWriter hands events
    to a background thread and its `flush()` does not wait for that queue, so a checkpoint taken right after
    a step could leave that step's scalars unwritten; here `flush()` means on disk. `purge_step` writes the
    SessionLog.START event with which TensorBoard hides the earlier files' steps from `purge_step` on (a
    resumed run). The file name carries the process id and a per-process count, so a second writer opened
    in the same second does not truncate the first one's file; the count is zero-padded because TensorBoard reads
    a folder's files in name order (a tenth writer's `.10` would sort before a ninth's `.9`, its purge before the
    steps it purges)."""

    _opened = 0

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        os.makedirs(logdir, exist_ok=True)
        EventFile._opened += 1
        self._events = EventsWriter(os.path.join(str(logdir), "events"), f".{os.getpid()}.{EventFile._opened:06d}")
        if purge_step is not None:
            self._events.write_event(Event(step=purge_step, wall_time=time.time(),
                                           session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self._events.write_event(Event(summary=scalar(tag, float(value)), step=int(step), wall_time=time.time()))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


class Scalars:
    """TensorBoard scalars (tensorboardX's protos; no TensorFlow needed): per epoch `train/loss`,
    `val/acc` (`val/cc`, ...), `lr` in `RUN/tensorboard`; per step `iteration/loss`, `iteration/learning_rate`,
    `iteration/accuracy` (the seed's tags; `iteration/cc`) in `RUN/tensorboard/iteration`, a second event stream
    because the two count different things and a resumed run purges each from its own step."""

    def __init__(self, run: RunDir, purge_step: int | None = None, purge_iteration: int | None = None):
        self.writer = EventFile(run.tensorboard_path, purge_step=purge_step)
        self._iteration_args = (run.tensorboard_path / "iteration", purge_iteration)
        self._iterations = None

    def epoch(self, record: dict) -> None:
        step = record["epoch"]
        for phase in ("train", "val"):
            for key in ("loss", *METRIC_ORDER):
                if key in record[phase]:
                    self.writer.add_scalar(f"{phase}/{key}", record[phase][key], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.flush()

    def step(self, step: int, *, loss: float | None = None, lr: float | None = None,
             score: tuple[str, float] | None = None):
        """Per-step scalars under the seed's tags (`loss`, `learning_rate`, and a val evaluation's score:
        `accuracy` for a classifier, `cc` for a saliency map)."""
        if self._iterations is None:
            logdir, purge = self._iteration_args
            self._iterations = EventFile(logdir, purge_step=purge)
        values = [("loss", loss), ("learning_rate", lr)] + ([score] if score else [])
        for tag, value in values:
            if value is not None:
                self._iterations.add_scalar(f"iteration/{tag}", value, step)

    def flush(self) -> None:
        """Before a checkpoint: a resumed run purges the steps after it, so those before it must be on
        disk."""
        self.writer.flush()
        if self._iterations is not None:
            self._iterations.flush()

    def close(self) -> None:
        self.writer.close()
        if self._iterations is not None:
            self._iterations.close()


class NoScalars:
    """What a data-parallel replica other than rank 0 holds in place of `Scalars`: it writes nothing."""

    def epoch(self, record: dict) -> None:
        pass

    def step(self, step: int, **values) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
