"""DenseNet-121 as a native `nn.Module`. Twin of `keras_impl/densenet.py`.

Attribute names are torchvision's checkpoint keys (`features.conv0`, `features.norm0`,
`features.denseblock1.denselayer1.norm1`, `features.transition1.conv`, `features.norm5`,
`classifier`), so a torchvision densenet121 state_dict loads with `strict=True`. The forward is
torchvision's plain one (`memory_efficient=False`): checkpointing would save memory in training
without changing a single value, and the Keras twin has no counterpart of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twins import registry

from .common import check_nchw


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (bottleneck to bn_size * growth_rate) then BN-ReLU-Conv3x3 (growth_rate new
    channels), on the concatenation of every earlier feature map of the block."""

    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class _DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; the output is [input, new_1, ..., new_n] concatenated on channels."""

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 halving the channels, then a 2x2 average pool halving the resolution."""

    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """DenseNet-BC: `growth_rate` channels per dense layer, `block_config` layers per block,
    `num_init_features` stem channels, a `bn_size * growth_rate` bottleneck, dropout `drop_rate`
    after every dense layer (0: none, torchvision's default)."""

    def __init__(
        self,
        growth_rate=32,
        block_config=(6, 12, 24, 16),
        num_init_features=64,
        bn_size=4,
        drop_rate=0.0,
        num_classes=1000,
        name="densenet121",
    ):
        super().__init__()
        self.name = name
        self.min_size = registry.get(name).min_input_size
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, num_init_features, 7, 2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, padding=1))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, num_classes)
        init_weights(self)

    def forward(self, x):
        check_nchw(x, 3, self.name, self.min_size)
        x = self.features(x)
        x = F.relu(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def init_weights(model: DenseNet) -> None:
    """torchvision's DenseNet initialisation: He-normal (fan_in) convs, BN gamma 1 / beta 0, the
    classifier's bias 0 (its weight keeps torch's default U(+-1/sqrt(fan_in)))."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _densenet(name, growth_rate, block_config, num_init_features, **kwargs) -> DenseNet:
    return DenseNet(growth_rate, block_config, num_init_features, name=name, **kwargs)


def densenet121(**kwargs) -> DenseNet:
    """`num_classes` (1000), `bn_size` (4) and `drop_rate` (0.0), as torchvision's."""
    return _densenet("densenet121", 32, (6, 12, 24, 16), 64, **kwargs)
