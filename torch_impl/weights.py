"""Exclude-final-layer restore for the torch twins. Twin of `keras_impl/weights.py`.

`load_state_dict(model, state_dict, exclude=("fc",), strict=True)` loads everything but the excluded
prefixes, which keep their fresh initialisation. It strips DataParallel's `module.` prefix and ignores
BatchNorm's `num_batches_tracked` counters. With `strict=True` every missing, unexpected and
mismatched key is listed in one `CheckpointMismatchError`, raised before any weight is touched.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from twins import checkpoints
from twins.checkpoints import CheckpointMismatchError, LoadReport


def load_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, "torch.Tensor | np.ndarray"] | str | os.PathLike,
    *,
    exclude: Iterable[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Load `state_dict` (a mapping, or a checkpoint file path) into `model`; returns the report."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = checkpoints.read(state_dict)
    state = checkpoints.strip_data_parallel(state_dict)
    own = model.state_dict()
    report = checkpoints.match(
        {k: tuple(v.shape) for k, v in own.items()},
        {k: tuple(np.shape(v)) for k, v in state.items()},
        exclude=exclude,
        ignore=checkpoints.is_counter,
    )
    if strict and not report.ok:
        raise CheckpointMismatchError(report, getattr(model, "name", type(model).__name__))
    with torch.no_grad():
        for key in report.loaded:
            value = state[key]
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
            own[key].copy_(tensor.to(own[key].dtype))
    return report


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (the interchange format's content)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
