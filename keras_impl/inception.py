"""Inception v3 in the Keras 3 functional API. Twin of `torch_impl/inception.py`.

Layer names are the torch twin's module paths with `.` as `-` (`Conv2d_1a_3x3-conv`,
`Mixed_5b-branch1x1-bn`, `AuxLogits-fc`, `fc`), so `keras_impl.weights` moves torchvision checkpoints
in and out. Each BasicConv2d's output is a ReLU named by its module path (`Mixed_5b-branch1x1`), each
Inception block's output a Concatenate named by its own (`Mixed_5b`).

The model has one output, the logits. The aux head is part of the graph (its output feeds the final
`logits` layer, which passes the logits through unchanged), so its layers and weights belong to the
model and a training view gets the aux logits by name:

    train_view = keras.Model(model.input, [model.output, model.get_layer("AuxLogits-fc").output])

Input sizes: eval mode needs at least 75x75, training mode with the aux head 299x299 (see the torch
twin). Between 75 and 298 in eval mode the aux head runs on a zero-padded map (`AuxLogits-min_size`)
so that the graph still computes; its output there means nothing, and the torch twin does not compute
it at all in eval mode.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from twins import registry

from .common import (BatchNorm, Logits, conv2d, dense, drawing_initial_values, image_input, max_pool,
                     resolved)

# The smallest Mixed_6e map the aux head computes on: its 5x5/3 average pool then leaves 5x5.
AUX_MIN_MAP = 17


def avg_pool(x, pool, stride, padding=0, *, name):
    """F.avg_pool2d twin. torch's default count_include_pad=True divides a border window by the full
    window size, pads counted as zeros; Keras' 'same' pooling excludes the pads. Explicit zeros +
    'valid' is what torch computes."""
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}-pad")(x)
    return layers.AveragePooling2D(pool, strides=stride, padding="valid", name=name)(x)


def basic_conv2d(x, filters, kernel, stride=1, padding=0, *, name):
    """Twin of torch_impl.inception.BasicConv2d: conv (no bias) + BatchNorm(eps 0.001) + ReLU."""
    x = conv2d(x, filters, kernel, stride, padding, name=f"{name}-conv")
    x = BatchNorm(epsilon=0.001, name=f"{name}-bn")(x)
    return layers.ReLU(name=name)(x)


def inception_a(x, pool_features, name):
    """Twin of torch_impl.inception.InceptionA (Mixed_5b/5c/5d)."""
    branch1x1 = basic_conv2d(x, 64, 1, name=f"{name}-branch1x1")

    branch5x5 = basic_conv2d(x, 48, 1, name=f"{name}-branch5x5_1")
    branch5x5 = basic_conv2d(branch5x5, 64, 5, padding=2, name=f"{name}-branch5x5_2")

    branch3x3dbl = basic_conv2d(x, 64, 1, name=f"{name}-branch3x3dbl_1")
    branch3x3dbl = basic_conv2d(branch3x3dbl, 96, 3, padding=1, name=f"{name}-branch3x3dbl_2")
    branch3x3dbl = basic_conv2d(branch3x3dbl, 96, 3, padding=1, name=f"{name}-branch3x3dbl_3")

    branch_pool = avg_pool(x, 3, 1, 1, name=f"{name}-avg_pool")
    branch_pool = basic_conv2d(branch_pool, pool_features, 1, name=f"{name}-branch_pool")
    return layers.Concatenate(name=name)([branch1x1, branch5x5, branch3x3dbl, branch_pool])


def inception_b(x, name):
    """Twin of torch_impl.inception.InceptionB (Mixed_6a)."""
    branch3x3 = basic_conv2d(x, 384, 3, stride=2, name=f"{name}-branch3x3")

    branch3x3dbl = basic_conv2d(x, 64, 1, name=f"{name}-branch3x3dbl_1")
    branch3x3dbl = basic_conv2d(branch3x3dbl, 96, 3, padding=1, name=f"{name}-branch3x3dbl_2")
    branch3x3dbl = basic_conv2d(branch3x3dbl, 96, 3, stride=2, name=f"{name}-branch3x3dbl_3")

    branch_pool = max_pool(x, 3, 2, name=f"{name}-max_pool")
    return layers.Concatenate(name=name)([branch3x3, branch3x3dbl, branch_pool])


def inception_c(x, channels_7x7, name):
    """Twin of torch_impl.inception.InceptionC (Mixed_6b..6e)."""
    c7 = channels_7x7
    branch1x1 = basic_conv2d(x, 192, 1, name=f"{name}-branch1x1")

    branch7x7 = basic_conv2d(x, c7, 1, name=f"{name}-branch7x7_1")
    branch7x7 = basic_conv2d(branch7x7, c7, (1, 7), padding=(0, 3), name=f"{name}-branch7x7_2")
    branch7x7 = basic_conv2d(branch7x7, 192, (7, 1), padding=(3, 0), name=f"{name}-branch7x7_3")

    branch7x7dbl = basic_conv2d(x, c7, 1, name=f"{name}-branch7x7dbl_1")
    branch7x7dbl = basic_conv2d(branch7x7dbl, c7, (7, 1), padding=(3, 0), name=f"{name}-branch7x7dbl_2")
    branch7x7dbl = basic_conv2d(branch7x7dbl, c7, (1, 7), padding=(0, 3), name=f"{name}-branch7x7dbl_3")
    branch7x7dbl = basic_conv2d(branch7x7dbl, c7, (7, 1), padding=(3, 0), name=f"{name}-branch7x7dbl_4")
    branch7x7dbl = basic_conv2d(branch7x7dbl, 192, (1, 7), padding=(0, 3), name=f"{name}-branch7x7dbl_5")

    branch_pool = avg_pool(x, 3, 1, 1, name=f"{name}-avg_pool")
    branch_pool = basic_conv2d(branch_pool, 192, 1, name=f"{name}-branch_pool")
    return layers.Concatenate(name=name)([branch1x1, branch7x7, branch7x7dbl, branch_pool])


def inception_d(x, name):
    """Twin of torch_impl.inception.InceptionD (Mixed_7a)."""
    branch3x3 = basic_conv2d(x, 192, 1, name=f"{name}-branch3x3_1")
    branch3x3 = basic_conv2d(branch3x3, 320, 3, stride=2, name=f"{name}-branch3x3_2")

    branch7x7x3 = basic_conv2d(x, 192, 1, name=f"{name}-branch7x7x3_1")
    branch7x7x3 = basic_conv2d(branch7x7x3, 192, (1, 7), padding=(0, 3), name=f"{name}-branch7x7x3_2")
    branch7x7x3 = basic_conv2d(branch7x7x3, 192, (7, 1), padding=(3, 0), name=f"{name}-branch7x7x3_3")
    branch7x7x3 = basic_conv2d(branch7x7x3, 192, 3, stride=2, name=f"{name}-branch7x7x3_4")

    branch_pool = max_pool(x, 3, 2, name=f"{name}-max_pool")
    return layers.Concatenate(name=name)([branch3x3, branch7x7x3, branch_pool])


def inception_e(x, name):
    """Twin of torch_impl.inception.InceptionE (Mixed_7b/7c)."""
    branch1x1 = basic_conv2d(x, 320, 1, name=f"{name}-branch1x1")

    branch3x3 = basic_conv2d(x, 384, 1, name=f"{name}-branch3x3_1")
    branch3x3 = layers.Concatenate(name=f"{name}-branch3x3")([
        basic_conv2d(branch3x3, 384, (1, 3), padding=(0, 1), name=f"{name}-branch3x3_2a"),
        basic_conv2d(branch3x3, 384, (3, 1), padding=(1, 0), name=f"{name}-branch3x3_2b"),
    ])

    branch3x3dbl = basic_conv2d(x, 448, 1, name=f"{name}-branch3x3dbl_1")
    branch3x3dbl = basic_conv2d(branch3x3dbl, 384, 3, padding=1, name=f"{name}-branch3x3dbl_2")
    branch3x3dbl = layers.Concatenate(name=f"{name}-branch3x3dbl")([
        basic_conv2d(branch3x3dbl, 384, (1, 3), padding=(0, 1), name=f"{name}-branch3x3dbl_3a"),
        basic_conv2d(branch3x3dbl, 384, (3, 1), padding=(1, 0), name=f"{name}-branch3x3dbl_3b"),
    ])

    branch_pool = avg_pool(x, 3, 1, 1, name=f"{name}-avg_pool")
    branch_pool = basic_conv2d(branch_pool, 192, 1, name=f"{name}-branch_pool")
    return layers.Concatenate(name=name)([branch1x1, branch3x3, branch3x3dbl, branch_pool])


@keras.saving.register_keras_serializable(package="twins")
class PadToMinSize(layers.Layer):
    """Zero-pads the bottom/right of a map smaller than `size` up to `size` (a no-op otherwise).

    Keras-only: a functional model runs every layer of its graph in every mode, so the aux head runs
    in eval mode too, where the torch twin skips it. Below a 299 input (Mixed_6e under 17x17) its
    5x5/3 pool and valid 5x5 conv would have nothing to compute on; padding keeps the graph valid for
    eval-mode inputs of 75..298, whose logits do not depend on the aux head. Training mode refuses
    those sizes (`InputSizeCheck`), so every aux logit that reaches a loss is computed unpadded."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = size

    def _deficit(self, dim):
        return max(self.size - dim, 0) if isinstance(dim, int) else ops.maximum(self.size - dim, 0)

    def call(self, x):
        shape = ops.shape(x)
        pad_h, pad_w = self._deficit(shape[1]), self._deficit(shape[2])
        if isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0:
            return x
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return n, None if h is None else max(h, self.size), None if w is None else max(w, self.size), c

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def inception_aux(x, num_classes, name):
    """Twin of torch_impl.inception.InceptionAux; returns the aux logits (layer `{name}-fc`)."""
    x = PadToMinSize(AUX_MIN_MAP, name=f"{name}-min_size")(x)
    x = avg_pool(x, 5, 3, name=f"{name}-avg_pool")
    x = basic_conv2d(x, 128, 1, name=f"{name}-conv0")
    x = basic_conv2d(x, 768, 5, name=f"{name}-conv1")
    x = layers.GlobalAveragePooling2D(name=f"{name}-adaptive_avg_pool")(x)
    return dense(x, num_classes, name=f"{name}-fc")


@keras.saving.register_keras_serializable(package="twins")
class InputSizeCheck(layers.Layer):
    """Twin of the size part of `Inception3._check_input`: the minimum depends on the mode, which
    `ImageCheck` (built once, before any call) does not see. Runs after `ImageCheck`, so the layout
    is already known to be NHWC."""

    def __init__(self, aux_logits=True, model="inception_v3", **kwargs):
        super().__init__(**kwargs)
        self.aux_logits, self.model = aux_logits, model

    def check(self, shape, training):
        min_size = registry.inception_min_input_size(bool(training), self.aux_logits)
        height, width = shape[1], shape[2]
        if height is not None and width is not None and min(height, width) < min_size:
            raise ValueError(
                f"{self.model} needs images of at least {min_size}x{min_size} pixels, got {height}x{width}; "
                f"{registry.inception_size_note(bool(training), self.aux_logits)}"
            )

    def call(self, x, training=None):
        self.check(tuple(x.shape), training)
        return x

    def compute_output_shape(self, input_shape):
        # A fixed `input_shape` is refused when the model is built, not by a conv deep inside it.
        self.check(input_shape, training=False)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "aux_logits": self.aux_logits, "model": self.model}


@keras.saving.register_keras_serializable(package="twins")
class TransformInput(layers.Layer):
    """Twin of `Inception3._transform_input`: x * scale + shift per channel (the last axis here)."""

    def call(self, x):
        scale = ops.convert_to_tensor(registry.INCEPTION_TRANSFORM_SCALE, dtype=x.dtype)
        shift = ops.convert_to_tensor(registry.INCEPTION_TRANSFORM_SHIFT, dtype=x.dtype)
        return x * scale + shift

    def compute_output_shape(self, input_shape):
        return input_shape


def init_weights(model: keras.Model) -> None:
    """Twin of torch_impl.inception.init_weights: every conv and dense kernel ~ N(0, std), std 0.1
    except `AuxLogits-fc` (0.001); BatchNorm gamma 1 / beta 0 and the dense biases U(+-1/sqrt(fan_in))
    stay as the common helpers made them. torchvision draws trunc_normal(std, a=-2, b=2), whose cut is
    absolute and 20 std or more away, i.e. a plain normal: Keras' TruncatedNormal cuts at 2 std, so
    RandomNormal is the mirror."""
    if not drawing_initial_values():
        return
    stddev = {"AuxLogits-fc": 0.001}
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)):
            initializer = resolved(keras.initializers.RandomNormal(0.0, stddev.get(layer.name, 0.1)))
            layer.kernel.assign(initializer(layer.kernel.shape, dtype=layer.kernel.dtype))


def inception_v3(num_classes=1000, aux_logits=True, transform_input=False, dropout=0.5,
                 input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.inception.inception_v3 (torchvision's `Inception3`); torchvision's ImageNet
    weights expect `transform_input=True` (it switches the option on together with them)."""
    name = "inception_v3"
    inputs, x = image_input(input_shape, name)
    x = InputSizeCheck(aux_logits, name, name="size_check")(x)
    if transform_input:
        x = TransformInput(name="transform_input")(x)
    x = basic_conv2d(x, 32, 3, stride=2, name="Conv2d_1a_3x3")
    x = basic_conv2d(x, 32, 3, name="Conv2d_2a_3x3")
    x = basic_conv2d(x, 64, 3, padding=1, name="Conv2d_2b_3x3")
    x = max_pool(x, 3, 2, name="maxpool1")
    x = basic_conv2d(x, 80, 1, name="Conv2d_3b_1x1")
    x = basic_conv2d(x, 192, 3, name="Conv2d_4a_3x3")
    x = max_pool(x, 3, 2, name="maxpool2")
    x = inception_a(x, 32, "Mixed_5b")
    x = inception_a(x, 64, "Mixed_5c")
    x = inception_a(x, 64, "Mixed_5d")
    x = inception_b(x, "Mixed_6a")
    x = inception_c(x, 128, "Mixed_6b")
    x = inception_c(x, 160, "Mixed_6c")
    x = inception_c(x, 160, "Mixed_6d")
    x = inception_c(x, 192, "Mixed_6e")
    aux = inception_aux(x, num_classes, "AuxLogits") if aux_logits else None
    x = inception_d(x, "Mixed_7a")
    x = inception_e(x, "Mixed_7b")
    x = inception_e(x, "Mixed_7c")
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = dense(x, num_classes, name="fc")
    if aux is not None:
        x = Logits(name="logits")([x, aux])
    model = keras.Model(inputs, x, name=name)
    init_weights(model)
    return model
