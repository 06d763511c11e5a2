"""AlexNet ("one weird trick" variant, torchvision's) as a native `nn.Module`. Twin of `keras_impl/alexnet.py`.

Attribute names are torchvision's checkpoint keys (`features.0`, `features.3`, ..., `classifier.1`,
`classifier.4`, `classifier.6`), so a torchvision AlexNet state_dict loads with `strict=True`; the
fine-tuning head is `classifier.6`. torchvision keeps PyTorch's default initialisation for AlexNet.
"""
from __future__ import annotations

import torch
from torch import nn

from twins import registry

from .common import check_nchw

# conv 11/4 pad 2, then three 3/2 max-pools: 63x63 is the smallest input that leaves them a window.
MIN_SIZE = registry.get("alexnet").min_input_size


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5, name="alexnet"):
        super().__init__()
        self.name = name
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        check_nchw(x, 3, self.name, MIN_SIZE)
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet(**kwargs) -> AlexNet:
    """`num_classes` (1000) and `dropout` (0.5, the probability of both classifier Dropouts)."""
    return AlexNet(**kwargs)
