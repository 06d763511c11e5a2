"""SqueezeNet 1.0 as a native `nn.Module`. Twin of `keras_impl/squeezenet.py`.

Attribute names are torchvision's checkpoint keys (`features.0`, `features.3.squeeze`,
`features.3.expand1x1`, `features.3.expand3x3`, `classifier.1`), so a torchvision squeezenet1_0
state_dict loads with `strict=True`. The classifier is a 1x1 conv (`classifier.1`), followed by a
ReLU and a global average pool: the logits are non-negative, as in torchvision.
"""
from __future__ import annotations

import torch
from torch import nn

from twins import registry

from .common import check_nchw


class Fire(nn.Module):
    """Squeeze (1x1) then two parallel expands (1x1 and 3x3), concatenated 1x1-first on channels."""

    def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


def max_pool_ceil(kernel: int, stride: int) -> nn.MaxPool2d:
    # ceil_mode=True: a last, partial window covers the bottom/right edge (the Keras twin pads for it).
    return nn.MaxPool2d(kernel, stride, ceil_mode=True)


class SqueezeNet(nn.Module):
    name = "squeezenet1_0"

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        # Kept as an attribute, as torchvision's model and the seed's fine-tuning recipe keep it.
        self.num_classes = num_classes
        self.min_size = registry.get(self.name).min_input_size
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, 2),
            nn.ReLU(inplace=True),
            max_pool_ceil(3, 2),
            Fire(96, 16, 64, 64),
            Fire(128, 16, 64, 64),
            Fire(128, 32, 128, 128),
            max_pool_ceil(3, 2),
            Fire(256, 32, 128, 128),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            max_pool_ceil(3, 2),
            Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv2d(512, num_classes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        init_weights(self)

    def forward(self, x):
        check_nchw(x, 3, self.name, self.min_size)
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def init_weights(model: SqueezeNet) -> None:
    """torchvision's SqueezeNet initialisation: He-uniform (fan_in) convs, except the final conv
    (`classifier.1`), drawn from N(0, 0.01); every bias zero."""
    final_conv = model.classifier[1]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m is final_conv:
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
            else:
                nn.init.kaiming_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def squeezenet1_0(**kwargs) -> SqueezeNet:
    """`num_classes` (1000) and `dropout` (0.5, torchvision's; the parity engine trains with 0.0)."""
    return SqueezeNet(**kwargs)
