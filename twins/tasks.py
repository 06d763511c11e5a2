"""What a model's outputs are scored by, framework-free: both trainers, `twins evaluate` and the run
directory ask the model's task (`twins.registry.ModelInfo.task`) rather than assume a classifier.

    task = tasks.get("saliency")
    tally = task.tally()
    tally.add(predicted_maps, target_maps)     # numpy, NHWC (a torch trainer transposes its NCHW maps)
    tally.result()                             # {"loss": MSE, "cc": .., "kld": .., "sim": .., "samples": N}

- classification: logits (N, C) against class indices; loss = cross-entropy, metric `acc`, which also
  picks the best epoch; the train phase counts `acc` too.
- saliency: sigmoid maps (N, H, W, 1) against target maps in [0, 1]; loss = MSE (the recipe's), metrics
  CC, KLD and SIM per image (`twins.metrics`), the best epoch by CC; the train phase reports its loss.
- contrastive: `(feature, projection)` of interleaved view pairs; loss = NT-Xent of the projections (the train
  phase's only figure); the val phase is the kNN monitor (`knn_monitor`): the encoder's features of the train
  split (no augmentation) are the memory, each val image is classified by its k nearest, and `knn` accuracy
  picks the best epoch. There is no val loss: NT-Xent of a batch depends on which images share it.
- segmentation: logits (N, H, W, C) against label maps (N, H, W), 255 not scored; loss = cross-entropy over
  the scored pixels, metrics mIoU (which picks the best epoch) and pixel accuracy. mIoU does not decompose
  per sample, so the tally (`SegmentationTally`) accumulates a confusion matrix and the cross-entropy's
  sum and pixel count over the phase; the train phase reports its loss.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from twins import metrics
from twins.registry import IGNORE_LABEL


@dataclass(frozen=True)
class Task:
    name: str
    # The val metric that picks the best epoch (higher is better).
    score: str
    # Metrics the train phase tallies besides the loss, and the ones a val phase reports.
    train_metrics: tuple[str, ...]
    val_metrics: tuple[str, ...]
    # What the per-step TensorBoard scalar of a val evaluation is called (the Food-101 seed's tag for acc).
    step_tag: str

    def scores(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Sums over the batch of the loss and of each val metric (a tally divides by the sample count)."""
        if self.name == "classification":
            return {"loss": metrics.cross_entropy(outputs, targets) * len(targets),
                    "acc": float(metrics.correct(outputs, targets))}
        if self.name == "segmentation":
            raise ValueError("segmentation scores are not sums per sample (mIoU does not decompose); "
                             "use task.tally()")
        return {k: float(v.sum()) for k, v in metrics.saliency_scores(outputs, targets).items()}

    def tally(self) -> "Tally":
        return SegmentationTally(self) if self.name == "segmentation" else Tally(self)


class Tally:
    """Running sums of a task's scores over the batches of a phase."""

    def __init__(self, task: Task):
        self.task, self.sums, self.samples = task, {}, 0

    def add(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        for key, value in self.task.scores(outputs, targets).items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.samples += len(targets)

    def result(self) -> dict:
        if not self.samples:
            raise ValueError("no samples were scored")
        return {**{k: v / self.samples for k, v in self.sums.items()}, "samples": self.samples}


class SegmentationTally(Tally):
    """A segmentation phase's running confusion matrix and cross-entropy (sum, scored pixels): `result()` is
    the loss averaged over every scored pixel of the phase and mIoU / accuracy of the whole phase's matrix
    (`twins.metrics.segmentation_scores`), the same whatever the batch size. With no scored pixel (all
    255) loss, mIoU and accuracy are 0.0 and `pixels` is 0."""

    def __init__(self, task: Task, ignore: int = IGNORE_LABEL):
        super().__init__(task)
        self.ignore, self.conf, self.loss_sum, self.pixels = ignore, None, 0.0, 0

    def add(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        """`outputs`: logits (N, H, W, C), `targets`: label maps (N, H, W)."""
        outputs, targets = np.asarray(outputs), np.asarray(targets)
        classes = outputs.shape[-1]
        if self.conf is not None and len(self.conf) != classes:
            raise ValueError(f"logits with {classes} classes after batches with {len(self.conf)}")
        loss_sum, pixels = metrics.segmentation_cross_entropy(outputs, targets, self.ignore)
        conf = metrics.confusion_matrix(outputs.argmax(axis=-1), targets, classes, self.ignore)
        self.conf = conf if self.conf is None else self.conf + conf
        self.loss_sum += loss_sum
        self.pixels += pixels
        self.samples += len(targets)

    def result(self) -> dict:
        if not self.samples:
            raise ValueError("no samples were scored")
        scores = metrics.segmentation_scores(self.conf)
        return {"loss": self.loss_sum / self.pixels if self.pixels else 0.0, "miou": scores["miou"],
                "acc": scores["acc"], "samples": self.samples, "pixels": self.pixels}


TASKS = {
    "classification": Task("classification", "acc", ("acc",), ("acc",), "accuracy"),
    "saliency": Task("saliency", "cc", (), ("cc", "kld", "sim"), "cc"),
    "contrastive": Task("contrastive", "knn", (), ("knn",), "knn_accuracy"),
    "segmentation": Task("segmentation", score="miou", train_metrics=(), val_metrics=("miou", "acc"), step_tag="miou"),
}


@dataclass(frozen=True)
class KnnPlans:
    """The kNN monitor's data (`twins.data.BatchPlan`s that do not shuffle, test transform): `memory`, the
    train split, whose features and labels vote; `query`, the val split, whose features are classified."""
    memory: object
    query: object
    classes: int
    k: int = 200
    t: float = 0.1

    @property
    def num_samples(self) -> int:
        return self.query.num_samples


def knn_monitor(features: Callable, plans: KnnPlans, workers: int = 0, progress: Callable | None = None) -> dict:
    """`{"knn": accuracy, "samples": val images, "seconds": ...}` of the encoder `features(x_nhwc) -> (B, D)
    numpy` (eval mode; each trainer brings its own): the memory's and the queries' features, then
    `twins.metrics.knn_predict` with the plans' k and t. `progress()` is called after each batch (a bar's
    `update`)."""
    start = time.perf_counter()
    collected = []
    for plan in (plans.memory, plans.query):
        rows = []
        for x, _ in plan.iterate(0, workers):
            rows.append(features(x))
            if progress is not None:
                progress()
        collected.append(np.concatenate(rows))
    memory, queries = collected
    predicted = metrics.knn_predict(memory, plans.memory.targets(), queries, plans.classes, plans.k, plans.t)
    labels = plans.query.targets()
    return {"knn": float((predicted == labels).mean()), "samples": len(labels),
            "seconds": time.perf_counter() - start}


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
