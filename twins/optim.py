"""The recipe arithmetic both trainers share: the learning rate as a pure function of the step, and which
tensors the L2 term decays. Framework-free, so the torch loop and Keras' `fit` read the same numbers.

    rates = learning_rates(recipe, total_steps)     # float32, rates[i] is the rate of step i
    keys = l2_keys({key: shape, ...})               # torch keys of the tensors L2 decays

The torch trainer sets `param_group["lr"] = float(rates[i])` before step i; the Keras trainer's schedule
(`keras_impl.training.RateTable`) looks `rates[optimizer.iterations]` up. Both therefore apply the same
float32 rate at every step, with no second implementation of the formula to drift.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def polynomial_decay(step: int, *, start: float, end: float, total: int, power: float = 1.0) -> float:
    """TF1's `tf.train.polynomial_decay(start, step, total, end, power)` without cycling (the seed's
    schedule, linear with power 1): `start` at step 0, `end` from step `total` on."""
    if total < 1:
        raise ValueError(f"polynomial decay needs at least one step, got total={total}")
    fraction = 1.0 - min(step, total) / total
    return (start - end) * fraction ** power + end


SCHEDULES = ("linear", "cosine", "poly")
# PSPNet's "poly" schedule (semseg's `poly_learning_rate`): `lr * (1 - step / total) ** 0.9`.
POLY_POWER = 0.9


def cosine_decay(step: int, *, start: float, end: float, total: int) -> float:
    """Cosine annealing without restarts (SGDR, Loshchilov & Hutter 2017; the SimCLR reproductions' schedule):
    `end + (start - end) * (1 + cos(pi * step / total)) / 2`, `start` at step 0, `end` from step `total` on."""
    if total < 1:
        raise ValueError(f"cosine decay needs at least one step, got total={total}")
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def learning_rates(lr: float, lr_end: float | None, total_steps: int, schedule: str = "linear") -> np.ndarray:
    """The rate of every step `0 .. total_steps - 1` as float32 (the precision both optimisers apply it
    in): constant `lr`, or a decay from `lr` to `lr_end` over all `total_steps` steps (the step after the
    last would be at `lr_end`), linear (seed 002's), cosine (the SimCLR recipe's) or poly (PSPNet's: power 0.9)."""
    if total_steps < 1:
        raise ValueError(f"a run needs at least one step, got {total_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if lr_end is None:
        return np.full(total_steps, lr, np.float32)
    if schedule == "cosine":
        rates = [cosine_decay(i, start=lr, end=lr_end, total=total_steps) for i in range(total_steps)]
    else:
        power = POLY_POWER if schedule == "poly" else 1.0
        rates = [polynomial_decay(i, start=lr, end=lr_end, total=total_steps, power=power) for i in range(total_steps)]
    return np.asarray(rates, np.float32)


def l2_keys(shapes: Mapping[str, tuple]) -> list[str]:
    """The tensors the recipe's L2 term decays, as torch keys: every convolution kernel (4-D `weight`),
    as TF-slim's `arg_scope([slim.conv2d], weights_regularizer=...)` does; no bias, no BatchNorm, no
    Linear. Both trainers pick their variables through this one rule (torch by name, Keras through the
    bridge's key of each variable), so they regularise the same tensors."""
    return [key for key, shape in shapes.items() if key.endswith(".weight") and len(tuple(shape)) == 4]


def l2_penalty(values, weight_decay: float):
    """`weight_decay * sum(w**2) / 2` over `values`: `slim.l2_regularizer(weight_decay)`, i.e.
    `weight_decay * tf.nn.l2_loss(w)` (note the half; Keras' `L2(l)` is `l * sum(w**2)`), and torch's
    SGD `weight_decay` has the same gradient, `weight_decay * w`. Works on numpy arrays and on any
    framework's tensors that support `**` and `.sum()`."""
    return 0.5 * weight_decay * sum((v ** 2).sum() for v in values)
