"""Helpers every torch twin uses. Twin of `keras_impl/common.py`."""
from __future__ import annotations

import torch
from torch import nn

from twins.registry import size_problem


def check_nchw(x: torch.Tensor, channels: int = 3, model: str = "model", min_size: int = 1,
               max_size: int | None = None, multiple: int = 1, offset: int = 0, why: str = "") -> None:
    """Refuse the input mistakes that would otherwise surface as a shape error deep in the network.
    `max_size` is for a model with an upper bound too (vgg19_slim squeezes a map that must stay 1x1),
    `multiple` for one whose height and width must be multiples of it (saliency_unet: 32; `why` says why), after
    subtracting `offset` (pspnet: 8k + 1)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model} expects a torch.Tensor of shape (N, {channels}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects a 4-D NCHW batch of shape (N, {channels}, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        hint = ""
        if x.shape[-1] == channels:
            hint = " This looks like NHWC (channels last); torch_impl models take NCHW: x.permute(0, 3, 1, 2)."
        raise ValueError(
            f"{model} expects NCHW input with {channels} channels, shape (N, {channels}, H, W); "
            f"got shape {tuple(x.shape)}.{hint}"
        )
    problem = size_problem(model, x.shape[2], x.shape[3], min_size=min_size, max_size=max_size, multiple=multiple,
                           offset=offset, why=why)
    if problem:
        raise ValueError(problem)
    if not x.is_floating_point():
        raise TypeError(f"{model} expects a floating-point tensor, got dtype {x.dtype}")


def init_weights(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal (fan_out) convs, BN gamma 1 / beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
