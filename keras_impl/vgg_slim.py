"""VGG-19 in TF-slim's layout (the seed's `vgg_19`: fc6/fc7/fc8 are convolutions) in the Keras 3
functional API. Twin of `torch_impl/vgg_slim.py`.

Layer names are the torch twin's module paths with `.` as `-` (`conv1-conv1_1`, ..., `conv5-conv5_4`,
`fc6`, `fc7`, `fc8`: the slim scopes with `/` as `-`), so `keras_impl.weights` moves slim snapshots
converted to torch layout in and out; the layers that hold no weights carry their torch paths too
(`conv1-relu1_1`, `pool1`, `relu6`, `drop6`).
"""
from __future__ import annotations

import keras
from keras import layers

from twins import registry

from .common import conv2d, image_input, max_pool

NAME = "vgg19_slim"


def conv_block(x, channels, repeat, block):
    """Twin of torch_impl.vgg_slim.conv_block: 3x3 SAME convs (explicit padding 1) with their ReLUs."""
    for i in range(1, repeat + 1):
        x = slim_conv(x, channels, 3, 1, name=f"conv{block}-conv{block}_{i}")
        x = layers.ReLU(name=f"conv{block}-relu{block}_{i}")(x)
    return x


def slim_conv(x, filters, kernel, padding=0, *, name):
    """slim.conv2d's defaults: Glorot-uniform kernel, zero bias; the twin of
    torch_impl.vgg_slim.init_slim_weights."""
    return conv2d(x, filters, kernel, 1, padding, use_bias=True, kernel_initializer="glorot_uniform",
                  bias_initializer="zeros", name=name)


def vgg19_slim(num_classes=1000, dropout=0.5, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.vgg_slim.VGGSlim: `num_classes` (1000), `dropout` (0.5, drop6 and drop7),
    `input_shape` (NHWC)."""
    info = registry.get(NAME)
    # 224..255 px only: fc8's map must be 1x1 for the squeeze to leave [N, num_classes].
    inputs, x = image_input(input_shape, NAME, min_size=info.min_input_size, max_size=info.max_input_size)
    x = conv_block(x, 64, 2, 1)
    x = max_pool(x, 2, 2, name="pool1")
    x = conv_block(x, 128, 2, 2)
    x = max_pool(x, 2, 2, name="pool2")
    x = conv_block(x, 256, 4, 3)
    x = max_pool(x, 2, 2, name="pool3")
    x = conv_block(x, 512, 4, 4)
    x = max_pool(x, 2, 2, name="pool4")
    x = conv_block(x, 512, 4, 5)
    x = max_pool(x, 2, 2, name="pool5")
    x = slim_conv(x, 4096, 7, name="fc6")  # VALID: a 7x7 pool5 map becomes 1x1
    x = layers.ReLU(name="relu6")(x)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = slim_conv(x, 4096, 1, name="fc7")
    x = layers.ReLU(name="relu7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    x = slim_conv(x, num_classes, 1, name="fc8")
    # tf.squeeze(net, [1, 2], name="fc8/squeezed"); a Reshape keeps the class axis static.
    x = layers.Reshape((num_classes,), name="fc8_squeezed")(x)
    return keras.Model(inputs, x, name=NAME)
