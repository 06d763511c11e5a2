"""The Keras twin of torchvision's MobileNetV2, written with `keras_impl.layers` alone: every layer is the torch
module of the same name, named by its path (`features.1.conv.0.0` -> `features-1-conv-0-0`), so the weight bridge
loads torchvision's state_dict into it strictly. Twin of `torch_model.py`."""
from __future__ import annotations

import keras

from keras_impl import layers

from .architecture import INVERTED_RESIDUAL_SETTING, make_divisible


def conv2d_norm_activation(x, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, *, name: str):
    """Twin of `Conv2dNormActivation`."""
    x = layers.Conv2d(oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False,
                      name=f"{name}-0")(x)
    x = layers.BatchNorm2d(oup, name=f"{name}-1")(x)
    return layers.ReLU6(name=f"{name}-2")(x)


def inverted_residual(x, oup: int, stride: int, expand_ratio: int, *, name: str):
    """Twin of `InvertedResidual`."""
    inp = x.shape[-1]
    hidden = int(round(inp * expand_ratio))
    y, i = x, 0
    if expand_ratio != 1:
        y, i = conv2d_norm_activation(y, hidden, kernel_size=1, name=f"{name}-conv-0"), 1
    y = conv2d_norm_activation(y, hidden, stride=stride, groups=hidden, name=f"{name}-conv-{i}")
    y = layers.Conv2d(oup, 1, 1, 0, bias=False, name=f"{name}-conv-{i + 1}")(y)
    y = layers.BatchNorm2d(oup, name=f"{name}-conv-{i + 2}")(y)
    return keras.layers.Add(name=f"{name}-add")([x, y]) if stride == 1 and inp == oup else y


def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of `MobileNetV2` (NHWC input)."""
    # the input in the dtype policy's variable dtype: a float64 policy (the parity engine's training checks) gets a
    # float64 input, where keras.Input's default would cast the batch to float32
    inputs = keras.Input(shape=input_shape, dtype=keras.config.dtype_policy().variable_dtype, name="image")
    x = conv2d_norm_activation(inputs, make_divisible(32), stride=2, name="features-0")
    index = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            x = inverted_residual(x, make_divisible(c), s if i == 0 else 1, t, name=f"features-{index}")
            index += 1
    x = conv2d_norm_activation(x, make_divisible(1280), kernel_size=1, name=f"features-{index}")
    x = layers.AdaptiveAvgPool2d(1, name="avgpool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="classifier-0")(x)
    x = layers.Linear(num_classes, name="classifier-1")(x)
    return keras.Model(inputs, x, name="mobilenet_v2")
