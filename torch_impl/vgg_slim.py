"""VGG-19 in TF-slim's layout (the seed's `vgg_19`: fc6/fc7/fc8 are convolutions) as a native
`nn.Module`. Twin of `keras_impl/vgg_slim.py`.

Attribute names are the slim variable scopes with `/` as `.`: `vgg_19/conv1/conv1_1/weights` is
`conv1.conv1_1.weight`, `vgg_19/fc8/biases` is `fc8.bias`, so a slim snapshot converted to torch
layout (kernels HWIO -> OIHW) loads with `strict=True`; the fine-tuning head is `fc8`. The weight
decay the seed sets in its `arg_scope` belongs to the recipe, not to the model.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from twins import registry

from .common import check_nchw


def conv_block(in_channels, channels, repeat, block) -> nn.Sequential:
    """`slim.repeat(net, repeat, slim.conv2d, channels, [3, 3], scope=f"conv{block}")`: 3x3 SAME
    convs with a bias, each followed by its ReLU (`conv{block}_{i}`, `relu{block}_{i}`)."""
    layers = OrderedDict()
    for i in range(1, repeat + 1):
        layers[f"conv{block}_{i}"] = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
        in_channels = channels
    return nn.Sequential(layers)


def init_slim_weights(model: nn.Module) -> None:
    """slim.conv2d's defaults: Xavier-uniform weights; zero biases (the seed's `biases_initializer`)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class VGGSlim(nn.Module):
    name = "vgg19_slim"

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        info = registry.get(self.name)
        self.min_size, self.max_size = info.min_input_size, info.max_input_size
        self.conv1 = conv_block(3, 64, 2, 1)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = conv_block(64, 128, 2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv3 = conv_block(128, 256, 4, 3)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.conv4 = conv_block(256, 512, 4, 4)
        self.pool4 = nn.MaxPool2d(2, 2)
        self.conv5 = conv_block(512, 512, 4, 5)
        self.pool5 = nn.MaxPool2d(2, 2)
        self.fc6 = nn.Conv2d(512, 4096, 7)  # VALID: a 7x7 pool5 map becomes 1x1
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(4096, num_classes, 1)
        init_slim_weights(self)

    def forward(self, x):
        # 224..255 px only: fc8's map must be 1x1 for the squeeze to leave [N, num_classes].
        check_nchw(x, 3, self.name, self.min_size, self.max_size)
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        x = self.pool4(self.conv4(x))
        x = self.pool5(self.conv5(x))
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        x = self.fc8(x)
        return torch.squeeze(x, (2, 3))  # tf.squeeze(net, [1, 2], name="fc8/squeezed")


def vgg19_slim(**kwargs) -> VGGSlim:
    """`num_classes` (1000) and `dropout` (0.5, the drop probability of drop6 and drop7; slim's
    `keep_prob` 0.5)."""
    return VGGSlim(**kwargs)
