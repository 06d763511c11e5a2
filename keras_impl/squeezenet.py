"""SqueezeNet 1.0 in the Keras 3 functional API. Twin of `torch_impl/squeezenet.py`.

Layer names are the torch twin's module paths with `.` as `-` (`features-0`, `features-3-squeeze`,
`features-3-expand1x1`, `features-3-expand3x3`, `classifier-1`), so `keras_impl.weights` moves
torchvision checkpoints in and out. A Fire module's output is the Concatenate layer named by its
path (`features-3`).
"""
from __future__ import annotations

import keras
from keras import layers

from twins import registry

from .common import conv2d, image_input, max_pool


def conv2d_bias(x, filters, kernel, stride=1, padding=0, *, kernel_initializer, name):
    """Conv2d(bias=True) with SqueezeNet's initialisers (zero bias)."""
    return conv2d(x, filters, kernel, stride, padding, use_bias=True, kernel_initializer=kernel_initializer, name=name)


def fire(x, squeeze_planes, expand1x1_planes, expand3x3_planes, name):
    """Twin of torch_impl.squeezenet.Fire: expand1x1 before expand3x3 on the channel axis, as
    torch.cat([expand1x1, expand3x3], 1)."""
    x = conv2d_bias(x, squeeze_planes, 1, kernel_initializer=he_uniform(), name=f"{name}-squeeze")
    x = layers.ReLU(name=f"{name}-squeeze_activation")(x)
    a = conv2d_bias(x, expand1x1_planes, 1, kernel_initializer=he_uniform(), name=f"{name}-expand1x1")
    a = layers.ReLU(name=f"{name}-expand1x1_activation")(a)
    b = conv2d_bias(x, expand3x3_planes, 3, padding=1, kernel_initializer=he_uniform(), name=f"{name}-expand3x3")
    b = layers.ReLU(name=f"{name}-expand3x3_activation")(b)
    return layers.Concatenate(axis=-1, name=name)([a, b])


def max_pool_ceil(x, kernel, stride, *, name):
    """Twin of torch_impl.squeezenet.max_pool_ceil, MaxPool2d(ceil_mode=True), which Keras lacks.

    Padding `stride - 1` rows/columns at the bottom/right and pooling 'valid' gives torch's
    ceil((in - k) / s) + 1 windows for every input size, so the padding needs no static shape. Torch
    drops a last window that would start inside the padding; with no top/left padding that can only
    happen for kernel < stride, which is refused here. Zero padding equals torch's -inf because every
    SqueezeNet pool reads a post-ReLU (>= 0) tensor (features.1 and two Fire concatenations of ReLUs);
    a partial window always holds at least one real pixel, so a zero never outranks it."""
    if kernel < stride:
        raise ValueError(f"max_pool_ceil needs kernel >= stride (got {kernel} < {stride})")
    return max_pool(x, kernel, stride, ((0, stride - 1), (0, stride - 1)), name=name)


def squeezenet(inputs, x, num_classes=1000, dropout=0.5) -> keras.Model:
    """Twin of torch_impl.squeezenet.SqueezeNet, on the checked input `x` of `inputs`."""
    x = conv2d_bias(x, 96, 7, 2, kernel_initializer=he_uniform(), name="features-0")
    x = layers.ReLU(name="features-1")(x)
    x = max_pool_ceil(x, 3, 2, name="features-2")
    x = fire(x, 16, 64, 64, "features-3")
    x = fire(x, 16, 64, 64, "features-4")
    x = fire(x, 32, 128, 128, "features-5")
    x = max_pool_ceil(x, 3, 2, name="features-6")
    x = fire(x, 32, 128, 128, "features-7")
    x = fire(x, 48, 192, 192, "features-8")
    x = fire(x, 48, 192, 192, "features-9")
    x = fire(x, 64, 256, 256, "features-10")
    x = max_pool_ceil(x, 3, 2, name="features-11")
    x = fire(x, 64, 256, 256, "features-12")
    x = layers.Dropout(dropout, name="classifier-0")(x)
    x = conv2d_bias(x, num_classes, 1, kernel_initializer=final_conv_normal(), name="classifier-1")
    x = layers.ReLU(name="classifier-2")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="classifier-3")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name="squeezenet1_0")


def he_uniform():
    """torchvision's SqueezeNet conv init, kaiming_uniform_ (fan_in, gain sqrt(2)): U(+-sqrt(6 / fan_in))."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="uniform")


def final_conv_normal():
    """torchvision's init of the final conv (`classifier.1`): N(0, 0.01)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def squeezenet1_0(num_classes=1000, dropout=0.5, input_shape=(None, None, 3)) -> keras.Model:
    """`num_classes` (1000) and `dropout` (0.5, torchvision's; the parity engine trains with 0.0)."""
    inputs, x = image_input(input_shape, "squeezenet1_0", min_size=registry.get("squeezenet1_0").min_input_size)
    return squeezenet(inputs, x, num_classes, dropout)
