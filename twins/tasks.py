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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twins import metrics


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
        return {k: float(v.sum()) for k, v in metrics.saliency_scores(outputs, targets).items()}

    def tally(self) -> "Tally":
        return Tally(self)


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


TASKS = {
    "classification": Task("classification", "acc", ("acc",), ("acc",), "accuracy"),
    "saliency": Task("saliency", "cc", (), ("cc", "kld", "sim"), "cc"),
}


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
