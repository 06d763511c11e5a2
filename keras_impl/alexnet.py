"""AlexNet (torchvision's) in the Keras 3 functional API. Twin of `torch_impl/alexnet.py`.

Layer names are the torch twin's module paths with `.` as `-` (`features-0`, `classifier-1`,
`classifier-6`), so `keras_impl.weights` moves torchvision checkpoints in and out; the layers that
hold no weights carry their torch paths too (`features-1` ReLU, `avgpool`), so a parity failure can
name the first diverging one.
"""
from __future__ import annotations

import keras
from keras import layers

from twins import registry

from .common import AdaptiveAveragePool, conv2d, dense, image_input, max_pool, torch_uniform

MIN_SIZE = registry.get("alexnet").min_input_size


def conv2d_torch_init(x, filters, kernel, stride=1, padding=0, *, name):
    """nn.Conv2d with a bias and PyTorch's default init, which torchvision keeps for AlexNet."""
    fan_in = x.shape[-1] * kernel * kernel
    return conv2d(x, filters, kernel, stride, padding, use_bias=True, kernel_initializer=torch_uniform(fan_in),
                  bias_initializer=torch_uniform(fan_in), name=name)


def alexnet(num_classes=1000, dropout=0.5, input_shape=(None, None, 3), name="alexnet") -> keras.Model:
    """Twin of torch_impl.alexnet.AlexNet (built by `alexnet()`): `features`, `avgpool`, flatten,
    `classifier`, line for line."""
    inputs, x = image_input(input_shape, name, min_size=MIN_SIZE)
    x = conv2d_torch_init(x, 64, 11, 4, 2, name="features-0")
    x = layers.ReLU(name="features-1")(x)
    x = max_pool(x, 3, 2, name="features-2")
    x = conv2d_torch_init(x, 192, 5, 1, 2, name="features-3")
    x = layers.ReLU(name="features-4")(x)
    x = max_pool(x, 3, 2, name="features-5")
    x = conv2d_torch_init(x, 384, 3, 1, 1, name="features-6")
    x = layers.ReLU(name="features-7")(x)
    x = conv2d_torch_init(x, 256, 3, 1, 1, name="features-8")
    x = layers.ReLU(name="features-9")(x)
    x = conv2d_torch_init(x, 256, 3, 1, 1, name="features-10")
    x = layers.ReLU(name="features-11")(x)
    x = max_pool(x, 3, 2, name="features-12")
    # At the parity size (64) the map is 1x1 here and the pool replicates it to 6x6, as torch's does.
    x = AdaptiveAveragePool((6, 6), name="avgpool")(x)
    # Flattens H*W*C where torch flattens C*H*W: the bridge permutes classifier-1's input rows,
    # looking back through the Dropout in between.
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="classifier-0")(x)
    x = dense(x, 4096, name="classifier-1")
    x = layers.ReLU(name="classifier-2")(x)
    x = layers.Dropout(dropout, name="classifier-3")(x)
    x = dense(x, 4096, name="classifier-4")
    x = layers.ReLU(name="classifier-5")(x)
    x = dense(x, num_classes, name="classifier-6")
    return keras.Model(inputs, x, name=name)
