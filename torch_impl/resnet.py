"""ResNet 18/34/50/101/152 as native `nn.Module`s. Twin of `keras_impl/resnet.py`.

Attribute names are torchvision's checkpoint keys (`conv1`, `bn1`, `layer1.0.conv1`,
`layer1.0.downsample.0`, `fc`, ...), so a torchvision ResNet state_dict loads with `strict=True`.
Options other models build on: `include_top`/`pooling`, per-stage `dilation` instead of stride
(PSPNet), `stem="cifar"` (SimCLR) and `stem="deep"` (PSPNet), and `forward_stages` for skip taps.
"""
from __future__ import annotations

import torch
from torch import nn

from twins.registry import check_resnet_options, resnet_stage_info

from .common import check_nchw, init_weights

def conv3x3(inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        if dilation != 1:
            raise ValueError("BasicBlock (resnet18/34) does not support dilation; use resnet50/101/152")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu(x + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        # v1.5: the stride sits on the 3x3 conv, not on the first 1x1.
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(x + shortcut)


class ResNet(nn.Module):
    """`dilation=(d1, d2, d3, d4)`: a stage with d > 1 keeps stride 1 and dilates every 3x3 `conv2`
    of its blocks (PSPNet's convention: the first block too, unlike torchvision's
    `replace_stride_with_dilation`, which keeps the previous dilation there)."""

    def __init__(
        self,
        block,
        layers,
        num_classes=1000,
        include_top=True,
        pooling=None,
        stem="imagenet",
        dilation=(1, 1, 1, 1),
        name="resnet",
    ):
        super().__init__()
        check_resnet_options(stem, pooling, dilation)
        self.name = name
        self.stem = stem
        self.include_top = include_top
        self.pooling = "avg" if include_top else pooling
        self.num_classes = num_classes
        if stem == "deep":
            self.conv1 = conv3x3(3, 64, stride=2)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = conv3x3(64, 64)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = conv3x3(64, 128)
            self.bn3 = nn.BatchNorm2d(128)
            self.inplanes = 128
        else:
            kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
            self.conv1 = nn.Conv2d(3, 64, kernel, stride, padding=kernel // 2, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.inplanes = 64
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, dilation[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilation[1])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilation[2])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilation[3])
        self.num_features = 512 * block.expansion
        if self.pooling == "avg":
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        if include_top:
            self.fc = nn.Linear(self.num_features, num_classes)
        self.stage_info = resnet_stage_info(block.expansion, stem, dilation)
        init_weights(self)

    def _make_layer(self, block, planes, blocks, stride, dilation):
        if dilation > 1:
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_stem(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return x

    def forward_stages(self, x) -> dict[str, torch.Tensor]:
        """Outputs of the stem (after its last ReLU, before the max-pool) and of layer1..layer4,
        under the names the Keras twin gives those layers; `stage_info` lists channels and strides."""
        check_nchw(x, 3, self.name)
        stages = {"stem": self.forward_stem(x)}
        x = self.maxpool(stages["stem"])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = stages[name] = getattr(self, name)(x)
        return stages

    def forward(self, x):
        x = self.forward_stages(x)["layer4"]
        if self.pooling == "avg":
            x = torch.flatten(self.avgpool(x), 1)
        if self.include_top:
            x = self.fc(x)
        return x


def _resnet(name, block, layers, **kwargs) -> ResNet:
    return ResNet(block, layers, name=name, **kwargs)


def resnet18(**kwargs) -> ResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs) -> ResNet:
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], **kwargs)
