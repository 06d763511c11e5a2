"""Keras layers that compute what the torch module of the same name computes: the kit for writing the Keras twin of
a torch model in torch's own vocabulary.

Each layer takes the torch module's arguments with torch's defaults (the input channels are inferred when the layer
is built), works on NHWC tensors on every Keras backend, round-trips through `.keras` files, and holds its weights
under the names the weight bridge (`keras_impl.weights`) maps to the torch module's keys: name each layer by its
torch module's path with `.` written as `-` (`features.0` -> `name="features-0"`) and
`keras_impl.weights.load_torch_state_dict` loads a torch state_dict into the twin, strictly.

    torch                                   keras_impl.layers                      the hazard it handles
    nn.Conv2d(3, 64, 3, 2, 1)               Conv2d(64, 3, 2, 1)                    symmetric padding (Keras' 'same' pads a
                                                                                   stride-2 conv bottom/right only)
    nn.ConvTranspose2d(64, 32, 4, 2, 1)     ConvTranspose2d(32, 4, 2, 1)           torch's padding is a crop; Keras' 'same'
                                                                                   equals it only when k - s = 2p
    nn.BatchNorm2d(64)                      BatchNorm2d(64)                        eps 1e-5, momentum 0.1, unbiased running
                                                                                   variance, batch statistics in training
                                                                                   even when frozen
    nn.Linear(512, 10)                      Linear(10)                             torch's default init
    nn.Flatten()                            Flatten()                              C*H*W order: the next Linear takes
                                                                                   torch's weights as they are
    nn.MaxPool2d(3, 2, ceil_mode=True)      MaxPool2d(3, 2, ceil_mode=True)        -inf padding, ceil_mode's extra window
    nn.AvgPool2d(3, 2, 1)                   AvgPool2d(3, 2, 1)                     count_include_pad's divisor
    nn.AdaptiveAvgPool2d((7, 7))            AdaptiveAvgPool2d((7, 7))              torch's overlapping bins
    nn.Upsample(scale_factor=2)             Upsample(scale_factor=2)               torch's source pixels, align_corners
    nn.ReLU / ReLU6 / LeakyReLU / Hardswish / SiLU / Sigmoid / Dropout / Dropout2d / Identity: the same names

The layers that hold weights start from torch's default initialisation. Where a hazard already had an
implementation among the twins' helpers (`keras_impl.common`), the kit's layer is that implementation with torch's
constructor.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from . import common

PACKAGE = "twins.layers"
serializable = keras.saving.register_keras_serializable(package=PACKAGE)


def pair(value, what: str, layer: str) -> tuple[int, int]:
    """torch's `_pair`: an int is used for both height and width, a pair is (height, width)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{layer}: {what} must be an int or a pair of ints (height, width), got {value!r}")


def torch_default_uniform(fan_in: int):
    """torch's default init of a Conv2d, ConvTranspose2d or Linear weight (`kaiming_uniform_(a=sqrt(5))`) and bias:
    both U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    # resolved as a layer resolves its initialisers: drawn by numpy or not drawn inside `keras_impl.common`'s contexts
    return common.resolved(keras.initializers.RandomUniform(-bound, bound))


def torch_default_kernel():
    """torch's default init of a Conv2d, ConvTranspose2d or Linear weight, `kaiming_uniform_(a=sqrt(5))`:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is Keras' variance scaling of 1/3 over the kernel's fan-in (for a
    transposed conv's (kh, kw, out, in) kernel Keras' fan-in is out * kh * kw, torch's for its (in, out, kh, kw))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


def _check_channels(layer, channels, expected, what):
    if channels is None:
        raise ValueError(f"{layer.name} ({type(layer).__name__}): the channel axis (last, NHWC) must be known when "
                         "the layer is built")
    if expected is not None and channels != expected:
        raise ValueError(f"{layer.name} ({type(layer).__name__}): built for {what}={expected}, but its input has "
                         f"{channels} channels (NHWC, the last axis)")


@serializable
class Conv2d(common.Conv2D):
    """`torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True)`, the input channels inferred. `padding` is an int, a (height, width) pair, `"valid"` or `"same"`
    (torch's: stride 1 only, the odd pixel of an even kernel on the bottom/right), applied as zeros on both sides
    before a 'valid' convolution: torch pads symmetrically where Keras' `padding="same"` pads a stride-2
    convolution on the bottom/right only. `groups` splits the channels as torch does (`groups == in_channels`: a
    depthwise convolution, `out_channels` a multiple of it). The kernel is stored as (kh, kw, in / groups, out):
    the bridge's Conv2D rule, the same for every `groups`."""

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True, **kwargs):
        kernel, strides, dilations = (pair(kernel_size, "kernel_size", "Conv2d"), pair(stride, "stride", "Conv2d"),
                                      pair(dilation, "dilation", "Conv2d"))
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and strides != (1, 1):
                raise ValueError(f"Conv2d: padding='same' is not supported for strided convolutions (torch refuses "
                                 f"it too), got stride={stride!r}")
        else:
            padding = pair(padding, "padding", "Conv2d")
        if groups < 1 or out_channels % groups:
            raise ValueError(f"Conv2d: out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.torch_bias_init = "bias_initializer" not in kwargs
        # Keras refuses a stride over 1 with a dilation over 1, torch does not: such a conv runs at stride 1 and
        # keeps every stride-th output (the same windows)
        self.subsample = strides if max(strides) > 1 and max(dilations) > 1 else (1, 1)
        if self.subsample != (1, 1):
            strides = (1, 1)
        super().__init__(out_channels, kernel, strides=strides, padding="valid", dilation_rate=dilations,
                         groups=groups, use_bias=bias,
                         kernel_initializer=kwargs.pop("kernel_initializer", None) or torch_default_kernel(), **kwargs)
        self.torch_padding = padding

    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.torch_padding == "valid":
            return (0, 0), (0, 0)
        if self.torch_padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation_rate, self.kernel_size)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in self.torch_padding)

    def build(self, input_shape):
        channels = input_shape[-1]
        _check_channels(self, channels, None, "in_channels")
        if channels % self.groups:
            raise ValueError(f"{self.name} (Conv2d): in_channels ({channels}, the input's last axis) must be "
                             f"divisible by groups ({self.groups})")
        if self.use_bias and self.torch_bias_init:
            fan_in = channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            self.bias_initializer = torch_default_uniform(fan_in)
        super().build(input_shape)

    def convolution_op(self, inputs, kernel):
        (top, bottom), (left, right) = self.pads()
        if top or bottom or left or right:
            inputs = ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
        if self.groups > 1 and keras.backend.backend() == "tensorflow":
            y = self.grouped_on_tensorflow(inputs, kernel)
        else:
            y = super().convolution_op(inputs, kernel)
        if self.subsample != (1, 1):
            y = y[:, ::self.subsample[0], ::self.subsample[1], :]
        return y

    def grouped_on_tensorflow(self, inputs, kernel):
        """A grouped convolution as tensorflow's own ops: Keras hands tensorflow's CPU a grouped kernel inside a
        `tf.function(jit_compile=True)`, which tf2onnx and LiteRT's converter cannot take apart (an exported
        MobileNetV2 failed to load in onnxruntime). Depthwise (a group per input channel): `depthwise_conv` with
        the kernel (kh, kw, 1, in * m) read as (kh, kw, in, m); otherwise one convolution per group, concatenated."""
        kh, kw, per_group, out = kernel.shape
        channels = inputs.shape[-1]
        options = dict(strides=self.strides, padding="valid", dilation_rate=self.dilation_rate)
        if self.groups == channels:
            return ops.depthwise_conv(inputs, ops.reshape(kernel, (kh, kw, channels, out // channels)), **options)
        step = out // self.groups
        return ops.concatenate([
            ops.conv(inputs[..., g * per_group:(g + 1) * per_group], kernel[..., g * step:(g + 1) * step], **options)
            for g in range(self.groups)], axis=-1)

    def compute_output_shape(self, input_shape):
        (top, bottom), (left, right) = self.pads()
        n, h, w, c = input_shape
        shape = super().compute_output_shape((n, None if h is None else h + top + bottom,
                                              None if w is None else w + left + right, c))
        return (shape[0], *(None if m is None else (m - 1) // s + 1 for m, s in zip(shape[1:3], self.subsample)),
                shape[3])

    @property
    def torch_stride(self) -> tuple[int, int]:
        return tuple(s * k for s, k in zip(self.strides, self.subsample))

    def get_config(self):
        config = super().get_config()
        for key in ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
                    "use_bias", "activation"):
            config.pop(key, None)
        padding = self.torch_padding if isinstance(self.torch_padding, str) else list(self.torch_padding)
        return {**config, "out_channels": self.filters, "kernel_size": list(self.kernel_size),
                "stride": list(self.torch_stride), "padding": padding, "dilation": list(self.dilation_rate),
                "groups": self.groups, "bias": self.use_bias}


@serializable
class ConvTranspose2d(layers.Conv2DTranspose):
    """`torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
    bias=True)`, the input channels inferred: output size `(H - 1) * stride - 2 * padding + kernel_size +
    output_padding`. Computed as the full ('valid') transposed convolution, cropped by `padding` on each side, with
    `output_padding` more rows and columns on the bottom/right (where the crop left none, zeros, as torch's bias
    alone reaches them). Keras' `padding="same"` equals torch's only when `kernel_size - stride = 2 * padding`. The
    kernel is stored as (kh, kw, out, in), the bridge's Conv2DTranspose rule."""

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0, bias=True, **kwargs):
        kernel, strides = pair(kernel_size, "kernel_size", "ConvTranspose2d"), pair(stride, "stride", "ConvTranspose2d")
        padding = pair(padding, "padding", "ConvTranspose2d")
        output_padding = pair(output_padding, "output_padding", "ConvTranspose2d")
        if any(op >= s for op, s in zip(output_padding, strides)):
            raise ValueError(f"ConvTranspose2d: output_padding must be smaller than stride (torch's rule), got "
                             f"output_padding={output_padding} and stride={strides}")
        self.torch_bias_init = "bias_initializer" not in kwargs
        super().__init__(out_channels, kernel, strides=strides, padding="valid", use_bias=bias,
                         kernel_initializer=kwargs.pop("kernel_initializer", None) or torch_default_kernel(), **kwargs)
        self.torch_padding, self.torch_output_padding = padding, output_padding

    def build(self, input_shape):
        _check_channels(self, input_shape[-1], None, "in_channels")
        if self.use_bias and self.torch_bias_init:
            self.bias_initializer = torch_default_uniform(self.filters * self.kernel_size[0] * self.kernel_size[1])
        super().build(input_shape)

    def sizes(self, h, w):
        return tuple(None if n is None else (n - 1) * s - 2 * p + k + op for n, s, p, k, op in zip(
            (h, w), self.strides, self.torch_padding, self.kernel_size, self.torch_output_padding))

    def call(self, inputs):
        y = ops.conv_transpose(inputs, self.kernel, strides=self.strides, padding="valid",
                               data_format="channels_last")
        # the full transposed convolution: (n - 1) * s + k (Keras' 'valid' gives n * s when k < s: cut to it)
        full = [(n - 1) * s + k for n, s, k in zip(common.spatial_size(inputs), self.strides, self.kernel_size)]
        y = y[:, :full[0], :full[1], :]
        (ph, pw), (oh, ow) = self.torch_padding, self.torch_output_padding
        extra_h, extra_w = max(oh - ph, 0), max(ow - pw, 0)
        if extra_h or extra_w:
            y = ops.pad(y, [[0, 0], [0, extra_h], [0, extra_w], [0, 0]])
        y = y[:, ph:full[0] - ph + oh, pw:full[1] - pw + ow, :]
        if self.use_bias:
            y = y + self.bias
        return y

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.sizes(input_shape[1], input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        for key in ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "use_bias",
                    "activation", "output_padding"):
            config.pop(key, None)
        return {**config, "out_channels": self.filters, "kernel_size": list(self.kernel_size),
                "stride": list(self.strides), "padding": list(self.torch_padding),
                "output_padding": list(self.torch_output_padding), "bias": self.use_bias}


@serializable
class BatchNorm2d(common.BatchNorm):
    """`torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1)` (`keras_impl.common.BatchNorm`): running
    statistics move by `momentum` towards the batch's mean and its *unbiased* variance, normalisation uses the
    biased one; `training=True` uses the batch's statistics even when the layer is not trainable (torch's
    `requires_grad_(False)` freezes the affine weights, not the statistics; `training=False` is torch's `.eval()`).
    Keras' own BatchNormalization differs in all of these (eps 1e-3, momentum 0.99, biased running variance, and a
    non-trainable layer in inference mode)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, **kwargs):
        kwargs.pop("epsilon", None)
        super().__init__(epsilon=eps, momentum=momentum, **kwargs)
        self.num_features = num_features

    def build(self, input_shape):
        _check_channels(self, input_shape[-1], self.num_features, "num_features")
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        config.pop("epsilon", None)
        return {**config, "num_features": self.num_features, "eps": self.epsilon}


@serializable
class Linear(layers.Dense):
    """`torch.nn.Linear(in_features, out_features, bias=True)`, the input features inferred, with torch's default
    init. The kernel is stored as (in, out), the bridge's Dense rule (transposed to torch's (out, in)); behind the
    kit's `Flatten` the rows are already in torch's C*H*W order."""

    def __init__(self, out_features, bias=True, **kwargs):
        kwargs.pop("units", None)
        self.torch_bias_init = "bias_initializer" not in kwargs
        super().__init__(out_features, use_bias=bias,
                         kernel_initializer=kwargs.pop("kernel_initializer", None) or torch_default_kernel(),
                         **kwargs)

    def build(self, input_shape):
        _check_channels(self, input_shape[-1], None, "in_features")
        if self.use_bias and self.torch_bias_init:
            self.bias_initializer = torch_default_uniform(input_shape[-1])
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        for key in ("units", "use_bias", "activation"):
            config.pop(key, None)
        return {**config, "out_features": self.units, "bias": self.use_bias}


@serializable
class Flatten(layers.Layer):
    """`torch.nn.Flatten()` of an NHWC map in torch's order: the map is read as (C, H, W), so a `Linear` after it
    takes torch's weights as they are (Keras' own Flatten reads (H, W, C); the bridge permutes the rows of a Dense
    behind that one, not behind this). A tensor of 2 or 3 axes is flattened as it is."""

    def call(self, x):
        if len(x.shape) == 4:
            x = ops.transpose(x, (0, 3, 1, 2))
        return ops.reshape(x, (ops.shape(x)[0], -1))

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else int(np.prod(rest)))


def pool_size_out(n: int, kernel: int, stride: int, padding: int, ceil_mode: bool, dilation: int = 1) -> int:
    """torch's pooled size: `floor` (or `ceil`) of `(n + 2p - d(k - 1) - 1) / s` + 1, and with `ceil_mode` a last
    window that would start in the right padding dropped."""
    span = n + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


class _Pool2d(layers.Layer):
    """torch's MaxPool2d / AvgPool2d geometry: `padding` on both sides, and with `ceil_mode` the extra bottom/right
    rows the last (partial) window reaches, as a padded input to a 'valid' pooling."""

    kind = "pool"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, **kwargs):
        super().__init__(**kwargs)
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name)
        self.padding = pair(padding, "padding", name)
        self.ceil_mode = bool(ceil_mode)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding should be at most half of kernel_size (torch's rule), got "
                             f"padding={self.padding}, kernel_size={self.kernel_size}")

    def out_sizes(self, h, w):
        return tuple(None if n is None else pool_size_out(n, k, s, p, self.ceil_mode)
                     for n, k, s, p in zip((h, w), self.kernel_size, self.stride, self.padding))

    def pads(self, h, w):
        """((top, bottom), (left, right)) around the input: `padding`, and on the bottom/right what the last
        window needs beyond it."""
        out = []
        for n, o, k, s, p in zip((h, w), self.out_sizes(h, w), self.kernel_size, self.stride, self.padding):
            if o is None or o < 1:
                raise ValueError(f"{self.name} ({type(self).__name__}): its input of {h}x{w} is too small for "
                                 f"kernel_size={self.kernel_size}, padding={self.padding} (output {o})")
            out.append((p, max((o - 1) * s + k - n - p, p)))
        return tuple(out)

    def padded(self, x, value):
        (top, bottom), (left, right) = self.pads(*common.spatial_size(x))
        if top or bottom or left or right:
            x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)
        return x

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError(f"{self.name} ({type(self).__name__}) needs the height and width of its input when it "
                             f"is traced, got shape {tuple(x.shape)}")
        return self.pool(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.out_sizes(input_shape[1], input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "ceil_mode": self.ceil_mode}


@serializable
class MaxPool2d(_Pool2d):
    """`torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, ceil_mode=False)`: the padding is -inf (a negative
    input is never beaten by it; `keras_impl.common.max_pool`'s zeros are right only after a ReLU), and with
    `ceil_mode` the last partial window is pooled over what it reaches (Keras' 'valid' drops it)."""

    def pool(self, x):
        x = self.padded(x, float("-inf"))
        return ops.max_pool(x, self.kernel_size, self.stride, padding="valid")


@serializable
class AvgPool2d(_Pool2d):
    """`torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)`: the sum
    over each window divided by torch's divisor, the window's cells inside the padded input
    (`count_include_pad=True`; the part of a `ceil_mode` window past the padding never counts) or inside the input
    (`False`). Computed as the average of the zero-padded input over the average of a mask of the cells that
    count."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, **kwargs):
        super().__init__(kernel_size, stride, padding, ceil_mode, **kwargs)
        self.count_include_pad = bool(count_include_pad)

    def pool(self, x):
        (top, bottom), (left, right) = self.pads(*common.spatial_size(x))
        h, w = common.spatial_size(x)
        ph, pw = self.padding
        counted = (np.ones((1, h + 2 * ph, w + 2 * pw, 1)) if self.count_include_pad
                   else np.pad(np.ones((1, h, w, 1)), [(0, 0), (ph, ph), (pw, pw), (0, 0)]))
        counted = np.pad(counted, [(0, 0), (0, bottom - ph), (0, right - pw), (0, 0)])
        divisor = ops.average_pool(ops.convert_to_tensor(counted, dtype=x.dtype), self.kernel_size, self.stride,
                                   padding="valid")
        return ops.average_pool(self.padded(x, 0.0), self.kernel_size, self.stride, padding="valid") / divisor

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


@serializable
class AdaptiveAvgPool2d(common.AdaptiveAveragePool):
    """`torch.nn.AdaptiveAvgPool2d(output_size)` (`keras_impl.common.AdaptiveAveragePool`): output cell i averages
    input cells `floor(i * in / out)` to `ceil((i + 1) * in / out) - 1`, so bins overlap where `out` does not divide
    `in`. `output_size` is an int or a (height, width) pair; None in it keeps that axis' size."""

    def __init__(self, output_size, **kwargs):
        kwargs.pop("data_format", None)
        size = (output_size, output_size) if isinstance(output_size, int) or output_size is None else tuple(output_size)
        self.torch_output_size = size
        super().__init__(tuple(1 if s is None else s for s in size), data_format="channels_last", **kwargs)

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if None in self.torch_output_size and (height is None or width is None):
            raise ValueError(f"{self.name} (AdaptiveAvgPool2d): output_size None keeps the input's size, which must "
                             f"be known when traced; got shape {tuple(x.shape)}")
        self.output_size = tuple(n if s is None else s for s, n in zip(self.torch_output_size, (height, width)))
        return super().call(x)

    def compute_output_shape(self, input_shape):
        size = tuple(n if s is None else s for s, n in zip(self.torch_output_size, input_shape[1:3]))
        return (input_shape[0], *size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        for key in ("data_format",):
            config.pop(key, None)
        return {**config, "output_size": list(self.torch_output_size)}


def _source_positions(size_in, size_out, scale, align_corners, dtype):
    """Where output pixel i reads the input, torch's `area_pixel_compute_source_index`: `i * (in - 1) / (out - 1)`
    with `align_corners`, otherwise `(i + 0.5) * scale - 0.5` clamped at 0, `scale` = 1 / scale_factor when one was
    given, else in / out."""
    positions = ops.cast(ops.arange(size_out), dtype)
    if align_corners:
        return positions * (ops.cast(size_in - 1, dtype) / ops.cast(ops.maximum(size_out - 1, 1), dtype))
    step = ops.cast(size_in, dtype) / ops.cast(size_out, dtype) if scale is None else ops.cast(1.0 / scale, dtype)
    return ops.maximum((positions + 0.5) * step - 0.5, 0.0)


def linear_matrix(size_in, size_out, scale, align_corners, dtype):
    """`(size_out, size_in)` weights of torch's (bi)linear resize along one axis: the source position's two
    neighbours weighted `1 - distance` (a position past the last pixel reads the last pixel)."""
    source = ops.minimum(_source_positions(size_in, size_out, scale, align_corners, dtype),
                         ops.cast(size_in - 1, dtype))
    return ops.relu(1.0 - ops.abs(source[:, None] - ops.cast(ops.arange(size_in), dtype)[None, :]))


def nearest_matrix(size_in, size_out, scale, dtype):
    """`(size_out, size_in)` selection of torch's 'nearest' resize: output i reads input
    `min(floor(i * scale), in - 1)`, `scale` = 1 / scale_factor when one was given, else in / out."""
    step = ops.cast(size_in, "float32") / ops.cast(size_out, "float32") if scale is None else 1.0 / scale
    source = ops.minimum(ops.floor(ops.cast(ops.arange(size_out), "float32") * step), ops.cast(size_in - 1, "float32"))
    return ops.cast(ops.equal(source[:, None], ops.cast(ops.arange(size_in), "float32")[None, :]), dtype)


@serializable
class Upsample(layers.Layer):
    """`torch.nn.Upsample(size=None, scale_factor=None, mode="nearest", align_corners=None)` for
    `mode="nearest"` and `mode="bilinear"`: the output is `size`, or `floor(input * scale_factor)`, and each
    output pixel reads the input where torch's kernel reads it (`align_corners=True`: corner to corner, like
    `keras_impl.common.AlignCornersResize`; otherwise half-pixel centres with torch's clamp at the edge, and with a
    `scale_factor` torch's 1 / scale_factor as the step). As two resize matrices, one per axis
    (`keras_impl.common.apply_separable`)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None, **kwargs):
        super().__init__(**kwargs)
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample: give exactly one of size and scale_factor (torch's rule), got "
                             f"size={size!r}, scale_factor={scale_factor!r}")
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
        if mode == "nearest" and align_corners is not None:
            raise ValueError("Upsample: align_corners only goes with mode='bilinear' (torch's rule)")
        self.size = None if size is None else pair(size, "size", "Upsample")
        if scale_factor is not None:
            scale_factor = (float(scale_factor),) * 2 if isinstance(scale_factor, (int, float)) \
                else tuple(float(s) for s in scale_factor)
        self.scale_factor = scale_factor
        self.mode, self.align_corners = mode, bool(align_corners)

    def out_sizes(self, h, w):
        if self.size is not None:
            return self.size
        return tuple(None if n is None else int(math.floor(n * s)) for n, s in zip((h, w), self.scale_factor))

    def call(self, x):
        h, w = common.spatial_size(x)
        if self.size is not None:
            (oh, ow), scales = self.size, (None, None)
        else:
            scales = self.scale_factor
            oh, ow = (ops.cast(ops.floor(ops.cast(n, "float32") * s), "int32") if not isinstance(n, int)
                      else int(math.floor(n * s)) for n, s in zip((h, w), scales))
        if self.mode == "nearest":
            rows, cols = nearest_matrix(h, oh, scales[0], x.dtype), nearest_matrix(w, ow, scales[1], x.dtype)
        else:
            rows = linear_matrix(h, oh, scales[0], self.align_corners, x.dtype)
            cols = linear_matrix(w, ow, scales[1], self.align_corners, x.dtype)
        return common.apply_separable(x, rows, cols, (h, w), (oh, ow))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.out_sizes(input_shape[1], input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": None if self.size is None else list(self.size),
                "scale_factor": None if self.scale_factor is None else list(self.scale_factor), "mode": self.mode,
                "align_corners": self.align_corners if self.mode == "bilinear" else None}


class _Elementwise(layers.Layer):
    def compute_output_shape(self, input_shape):
        return input_shape


@serializable
class ReLU(_Elementwise):
    """`torch.nn.ReLU()`."""

    def call(self, x):
        return ops.relu(x)


@serializable
class ReLU6(_Elementwise):
    """`torch.nn.ReLU6()`: min(max(x, 0), 6)."""

    def call(self, x):
        return ops.relu6(x)


@serializable
class LeakyReLU(common.LeakyReLU):
    """`torch.nn.LeakyReLU(negative_slope=0.01)` (`keras_impl.common.LeakyReLU`): torch's default slope (Keras'
    is 0.3), multiplied in the input's dtype."""

    def __init__(self, negative_slope=0.01, **kwargs):
        super().__init__(negative_slope=negative_slope, **kwargs)


@serializable
class Hardswish(_Elementwise):
    """`torch.nn.Hardswish()`: x * min(max(x + 3, 0), 6) / 6."""

    def call(self, x):
        return x * ops.relu6(x + 3.0) / 6.0


@serializable
class SiLU(_Elementwise):
    """`torch.nn.SiLU()`: x * sigmoid(x)."""

    def call(self, x):
        return x * ops.sigmoid(x)


@serializable
class Sigmoid(_Elementwise):
    """`torch.nn.Sigmoid()`."""

    def call(self, x):
        return ops.sigmoid(x)


@serializable
class Dropout(layers.Dropout):
    """`torch.nn.Dropout(p=0.5)`: zeroes each element with probability `p` in training and scales the rest by
    1 / (1 - p); the identity in eval. (Its random draws are Keras', not torch's.)"""

    def __init__(self, p=0.5, **kwargs):
        kwargs.pop("rate", None)
        super().__init__(p, **kwargs)

    def get_config(self):
        config = super().get_config()
        return {**{k: v for k, v in config.items() if k != "rate"}, "p": self.rate}


@serializable
class Dropout2d(layers.SpatialDropout2D):
    """`torch.nn.Dropout2d(p=0.5)`: zeroes whole channels (one draw per sample and channel of the NHWC map) in
    training, the rest scaled by 1 / (1 - p); the identity in eval."""

    def __init__(self, p=0.5, **kwargs):
        kwargs.pop("rate", None)
        kwargs.pop("data_format", None)
        super().__init__(p, data_format="channels_last", **kwargs)

    def get_config(self):
        config = super().get_config()
        return {**{k: v for k, v in config.items() if k not in ("rate", "data_format")}, "p": self.rate}


@serializable
class Identity(layers.Identity):
    """`torch.nn.Identity()`."""


__all__ = ["Conv2d", "ConvTranspose2d", "BatchNorm2d", "Linear", "Flatten", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "Upsample", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "SiLU", "Sigmoid", "Dropout",
           "Dropout2d", "Identity"]
