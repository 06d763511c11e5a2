"""VGG-11 with BatchNorm (torchvision's `vgg11_bn`, configuration "A") as a native `nn.Module`.
Twin of `keras_impl/vgg.py`.

Attribute names are torchvision's checkpoint keys (`features.0` conv, `features.1` BatchNorm, ...,
`classifier.0`, `classifier.3`, `classifier.6`), so a torchvision vgg11_bn state_dict loads with
`strict=True`; the fine-tuning head is `classifier.6`.
"""
from __future__ import annotations

import torch
from torch import nn

from twins import registry

from .common import check_nchw, init_weights

# Channel counts of the 3x3 convs, "M" a 2x2/2 max-pool (torchvision's `cfgs`).
CFGS = {"A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}


def make_layers(cfg, batch_norm=False) -> nn.Sequential:
    layers = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def init_vgg_weights(model: nn.Module) -> None:
    """torchvision's VGG initialisation: `common.init_weights` (He-normal fan-out convs with a zero
    bias, BN gamma 1 / beta 0), and Linear N(0, 0.01) with a zero bias."""
    init_weights(model)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class VGG(nn.Module):
    def __init__(self, features, num_classes=1000, dropout=0.5, name="vgg", min_size=32):
        super().__init__()
        self.name = name
        self.min_size = min_size
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        init_vgg_weights(self)

    def forward(self, x):
        check_nchw(x, 3, self.name, self.min_size)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(name, cfg, batch_norm, **kwargs) -> VGG:
    # Five 2x2/2 max-pools: 32x32 is the smallest input that leaves the last one a window.
    min_size = registry.get(name).min_input_size
    return VGG(make_layers(CFGS[cfg], batch_norm), name=name, min_size=min_size, **kwargs)


def vgg11_bn(**kwargs) -> VGG:
    """`num_classes` (1000) and `dropout` (0.5, the probability of both classifier Dropouts)."""
    return _vgg("vgg11_bn", "A", True, **kwargs)
