"""VGG-11 with BatchNorm (torchvision's `vgg11_bn`, configuration "A") in the Keras 3 functional API.
Twin of `torch_impl/vgg.py`.

Layer names are the torch twin's module paths with `.` as `-` (`features-0` conv, `features-1`
BatchNorm, `classifier-0`, `classifier-6`), so `keras_impl.weights` moves torchvision checkpoints in
and out; the layers that hold no weights carry their torch paths too (`features-2` ReLU, `avgpool`).
"""
from __future__ import annotations

import keras
from keras import layers

from twins import registry

from .common import AdaptiveAveragePool, BatchNorm, conv2d, dense, image_input, max_pool

CFGS = {"A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}


def make_layers(x, cfg, batch_norm=False):
    """Twin of torch_impl.vgg.make_layers: layer i of the torch Sequential is `features-{i}` here.
    Convs take `common.conv2d`'s He fan-out init with a zero bias (torchvision's VGG init)."""
    i = 0
    for v in cfg:
        if v == "M":
            x = max_pool(x, 2, 2, name=f"features-{i}")
            i += 1
        else:
            x = conv2d(x, v, 3, 1, 1, use_bias=True, name=f"features-{i}")
            if batch_norm:
                x = BatchNorm(name=f"features-{i + 1}")(x)
            x = layers.ReLU(name=f"features-{i + 2 if batch_norm else i + 1}")(x)
            i += 3 if batch_norm else 2
    return x


def linear(x, units, *, name):
    """nn.Linear twin with torchvision's VGG init, N(0, 0.01) weight and zero bias: the Linear half of
    torch_impl.vgg.init_vgg_weights."""
    return dense(x, units, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01), bias_initializer="zeros",
                 name=name)


def _vgg(name, cfg, batch_norm, num_classes=1000, dropout=0.5, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.vgg.VGG (built by `_vgg`)."""
    # Five 2x2/2 max-pools: 32x32 is the smallest input that leaves the last one a window.
    inputs, x = image_input(input_shape, name, min_size=registry.get(name).min_input_size)
    x = make_layers(x, CFGS[cfg], batch_norm)
    # At the parity size (32) the map is 1x1 here and the pool replicates it to 7x7, as torch's does.
    x = AdaptiveAveragePool((7, 7), name="avgpool")(x)
    # Flattens H*W*C where torch flattens C*H*W: the bridge permutes classifier-0's input rows.
    x = layers.Flatten(name="flatten")(x)
    x = linear(x, 4096, name="classifier-0")
    x = layers.ReLU(name="classifier-1")(x)
    x = layers.Dropout(dropout, name="classifier-2")(x)
    x = linear(x, 4096, name="classifier-3")
    x = layers.ReLU(name="classifier-4")(x)
    x = layers.Dropout(dropout, name="classifier-5")(x)
    x = linear(x, num_classes, name="classifier-6")
    return keras.Model(inputs, x, name=name)


def vgg11_bn(**kwargs) -> keras.Model:
    """`num_classes` (1000), `dropout` (0.5, both classifier Dropouts), `input_shape` (NHWC)."""
    return _vgg("vgg11_bn", "A", True, **kwargs)
