"""SimCLR on CIFAR-10 (seed 003) as native `nn.Module`s. Twin of `keras_impl/simclr.py`.

The seed's two classes, with their attribute names (so their state_dicts load with `strict=True`):
`SSL` (the encoder `enc` and the MLP `projector`, Linear 512->2048, ReLU, Linear 2048->128; forward returns
`(feature, projection)`) and `SL` (`enc` and a `linear` classifier, 512->10). The encoder is torchvision's
resnet18 with the CIFAR stem of SimCLR's appendix B.9: `conv1` a 3x3 stride-1 conv, `maxpool` and `fc`
identities, so `enc(x)` is the 512-d average-pooled feature and its keys are `enc.conv1.weight`,
`enc.bn1.*`, `enc.layer1.0.conv1.weight`, ... (torchvision's, without `fc`).

The seed's `SSL.forward` computes the projection and returns nothing (its last line is missing); SPEC.md
and the seed's training loop take `(feature, projection)`, which is what it returns here.
"""
from __future__ import annotations

import torch
from torch import nn

from twins.registry import get

from .common import check_nchw
from .resnet import resnet18

FEATURE_DIM = 512
HIDDEN_DIM = 2048


def cifar_encoder(name: str) -> nn.Module:
    """The seed's `enc`: resnet18 with conv1 = Conv2d(3, 64, 3, 1, 1, bias=False), maxpool and fc as
    identities; returns the 512-d pooled feature. Its input errors name the model (`name`)."""
    enc = resnet18(stem="cifar", include_top=False, pooling="avg")
    enc.name = name
    return enc


class SSL(nn.Module):
    """The seed's SSL: encoder + projection head; `forward(x) -> (feature, projection)`."""

    def __init__(self, projection_dim: int = 128):
        super().__init__()
        self.name = "simclr_ssl"
        self.enc = cifar_encoder(self.name)
        self.feature_dim = FEATURE_DIM
        self.projection_dim = projection_dim
        self.projector = nn.Sequential(nn.Linear(FEATURE_DIM, HIDDEN_DIM), nn.ReLU(),
                                       nn.Linear(HIDDEN_DIM, projection_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_nchw(x, 3, self.name, min_size=get(self.name).min_input_size)
        feature = self.enc(x)
        return feature, self.projector(feature)


class SL(nn.Module):
    """The seed's SL: the same encoder and a linear classifier; `forward(x) -> logits`."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.name = "simclr_sl"
        self.enc = cifar_encoder(self.name)
        self.feature_dim = FEATURE_DIM
        self.linear = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_nchw(x, 3, self.name, min_size=get(self.name).min_input_size)
        return self.linear(self.enc(x))


def simclr_ssl(num_classes: int = get("simclr_ssl").num_classes) -> SSL:
    """`num_classes` is the projection's dimension (the seed's `projection_dim`, 128): the head that a
    restore into another size leaves fresh is `projector.2`."""
    return SSL(projection_dim=num_classes)


def simclr_sl(num_classes: int = get("simclr_sl").num_classes) -> SL:
    return SL(num_classes=num_classes)
