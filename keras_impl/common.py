"""Helpers every Keras twin uses. Twin of `torch_impl/common.py`.

Every layer that holds weights is named by the torch module path of its twin with `.` written as `-`
(`layer1-0-conv1` is `layer1.0.conv1`); `keras_impl.weights` relies on that rule alone.
"""
from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
from keras import layers, ops

from twins.registry import size_problem


class NotDrawn(keras.initializers.Initializer):
    """What a variable starts from when it is about to be overwritten: zeros, made by numpy. No random draw (a
    VGG's 4096x25088 kernel took ~1 s on tensorflow) and, on jax, no program compiled per variable shape (a
    `jax.random.normal` and a `jnp.zeros` for each: 80 of the 157 s the parity worker spent compiling in the
    jax pass)."""

    def __call__(self, shape, dtype=None):
        return np.zeros(shape, dtype=keras.backend.standardize_dtype(dtype or keras.config.floatx()))


_DRAWING = [True]


def drawing_initial_values() -> bool:
    """False inside `initial_values_not_drawn()`."""
    return _DRAWING[0]


@contextlib.contextmanager
def initial_values_not_drawn():
    """Build twins whose every variable the caller overwrites next (a strict `weights.load_torch_state_dict`):
    every initializer a layer resolves (Keras resolves them all through `initializers.get`) is `NotDrawn`,
    and the builders' own re-initialisations (inception's) are skipped. A model built here holds `NotDrawn` in
    its layers' configs: load it, use it, do not save its config."""
    from keras.src import initializers

    original = initializers.get
    initializers.get = lambda identifier: None if identifier is None else NotDrawn()
    _DRAWING[0] = False
    try:
        yield
    finally:
        initializers.get = original
        _DRAWING[0] = True


class NumpyDrawn(keras.initializers.Initializer):
    """The distribution `original` draws from, drawn by numpy (`rng`): on jax, no program compiled per variable
    shape (a `jax.random` draw compiles one for each new shape: 20 s of a cold-cache jax parity worker), and no
    slow draw of a big kernel on tensorflow. Zeros, ones and constants stay themselves; the variance-scaling
    family (He, Glorot, LeCun, ours), random normal, truncated normal and random uniform are drawn with their own
    parameters; any other initializer draws on the backend as it would. A builder that re-initialises a variable
    itself goes through `resolved` to be drawn the same way."""

    def __init__(self, original, rng: np.random.Generator):
        self.original, self.rng = original, rng

    def _normal(self, shape, std, truncated=False):
        values = self.rng.standard_normal(shape)
        while truncated and (out := np.abs(values) > 2.0).any():  # Keras truncates at two standard deviations
            values[out] = self.rng.standard_normal(int(out.sum()))
        return values * std

    def __call__(self, shape, dtype=None):
        from keras.src.initializers import constant_initializers as const
        from keras.src.initializers import random_initializers as rand

        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        o, shape = self.original, tuple(shape)
        if isinstance(o, (const.Zeros, const.Ones, const.Constant)):
            value = 0.0 if isinstance(o, const.Zeros) else 1.0 if isinstance(o, const.Ones) else o.value
            return np.full(shape, np.asarray(value), dtype=dtype)
        if isinstance(o, rand.VarianceScaling):
            fan_in, fan_out = rand.compute_fans(shape)
            fan = {"fan_in": fan_in, "fan_out": fan_out}.get(o.mode, (fan_in + fan_out) / 2.0)
            scale = o.scale / max(1.0, fan)
            if o.distribution == "uniform":
                limit = math.sqrt(3.0 * scale)
                values = self.rng.uniform(-limit, limit, shape)
            else:
                truncated = o.distribution == "truncated_normal"
                values = self._normal(shape, math.sqrt(scale) / (0.87962566103423978 if truncated else 1.0), truncated)
        elif isinstance(o, rand.RandomNormal):
            values = o.mean + self._normal(shape, o.stddev)
        elif isinstance(o, rand.TruncatedNormal):
            values = o.mean + self._normal(shape, o.stddev, truncated=True)
        elif isinstance(o, rand.RandomUniform):
            values = self.rng.uniform(o.minval, o.maxval, shape)
        else:
            return o(shape, dtype=dtype)
        return values.astype(dtype)


@contextlib.contextmanager
def initial_values_drawn_by_numpy(seed: int):
    """Build twins whose initial values are drawn as their initializers would draw them, by numpy from `seed`
    (`NumpyDrawn`): for a twin whose values only need to be random and realistic (the parity engine's round trip
    and head restore), the builders' own re-initialisations (inception's, through `resolved`) too."""
    from keras.src import initializers

    original, rng = initializers.get, np.random.default_rng(seed)
    initializers.get = lambda identifier: None if identifier is None else NumpyDrawn(original(identifier), rng)
    try:
        yield
    finally:
        initializers.get = original


def resolved(initializer):
    """`initializer` as a layer would resolve it (`keras.src.initializers.get`): inside
    `initial_values_drawn_by_numpy` drawn by numpy, as the layers' own are; for a builder's own re-initialisation."""
    from keras.src import initializers

    return initializers.get(initializer)


def he_fan_out():
    """torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package="twins")
class BatchNorm(layers.Layer):
    """BatchNorm2d with torch's semantics, so one optimiser step matches the torch twin:
    eps 1e-5, running = (1 - momentum) * running + momentum * batch with momentum 0.1, and the
    running variance updated with the *unbiased* batch variance (Keras' own layer uses the biased
    one and momentum 0.99 / eps 1e-3). Normalisation itself uses the biased variance, as torch does.

    `training=True` always uses batch statistics, whatever `trainable` says (torch's meaning; Keras'
    BatchNormalization switches a non-trainable layer to inference mode). Statistics are computed in
    float32 under a float16/bfloat16 policy, in float64 under a float64 one."""

    def __init__(self, epsilon=1e-5, momentum=0.1, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=(channels,), initializer="zeros", name="moving_mean", trainable=False
        )
        self.moving_variance = self.add_weight(
            shape=(channels,), initializer="ones", name="moving_variance", trainable=False
        )

    def call(self, x, training=None):
        dtype = x.dtype
        x = ops.cast(x, "float64" if self.compute_dtype == "float64" else "float32")
        axes = list(range(len(x.shape) - 1))
        if training:
            mean, variance = ops.moments(x, axes=axes)
            count = ops.cast(ops.size(x) // x.shape[-1], x.dtype)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * (1.0 - m) + mean * m)
            self.moving_variance.assign(self.moving_variance * (1.0 - m) + self.running_variance(variance, count) * m)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        inv = ops.rsqrt(variance + self.epsilon) * self.gamma
        return ops.cast(x * inv + (self.beta - mean * inv), dtype)

    @staticmethod
    def running_variance(variance, count):
        """What the running variance moves towards: torch uses the unbiased batch variance
        (n / (n - 1) times the biased one that normalises the batch); Keras' own layer the biased."""
        return variance * count / ops.maximum(count - 1.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


def adaptive_bins(size_in: int, size_out: int) -> np.ndarray:
    """`(size_out, size_in)` averaging matrix of torch's adaptive pooling: output cell i averages inputs
    `floor(i * in / out)` to `ceil((i + 1) * in / out) - 1` (bins overlap when `out` does not divide
    `in`; an input of 1 is replicated)."""
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def apply_separable(x, rows, cols, size_in, size_out):
    """`rows` (out_h, in_h) along the height and `cols` (out_w, in_w) along the width of NHWC `x`:
    `einsum("pw,nowc->nopc", cols, einsum("oh,nhwc->nowc", rows, x))`, written as two matrix products over
    reshapes that keep the batch as the one free axis. The einsums themselves compute the same on every backend,
    but tensorflow's LiteRT converter turns an einsum on a batch-free input into Reshape ops whose output shapes
    hold a -1, which the LiteRT interpreter refuses as a whole ("BytesRequired number of elements overflowed":
    vgg11_bn's and pspnet's `.tflite`). `size_in` and `size_out` are (height, width), ints or, where the traced
    shape does not know them, scalar tensors."""
    (in_h, in_w), (out_h, out_w), channels = size_in, size_out, x.shape[-1]
    y = ops.matmul(rows, ops.reshape(x, (-1, in_h, in_w * channels)))  # (n, out_h, in_w * c)
    y = ops.matmul(cols, ops.reshape(y, (-1, in_w, channels)))  # (n * out_h, out_w, c)
    return ops.reshape(y, (-1, out_h, out_w, channels))


@keras.saving.register_keras_serializable(package="twins")
class AdaptiveAveragePool(layers.AdaptiveAveragePooling2D):
    """torch's AdaptiveAvgPool2d (NHWC) as two averaging matrices (`adaptive_bins`, `apply_separable`),
    one implementation for every backend. Keras 3.15's own layer is wrong in two places the zoo reaches:
    on jax it returns NaN for 7x7 -> 7x7 (vgg11_bn at 224 px), 6x6 -> 7x7 and 14x14 -> 7x7, and on
    tensorflow in graph mode (`fit`) it fails on an axis of extent 1 (vgg11_bn below 64 px, alexnet
    below ~100 px). A map whose size is unknown when traced falls back to Keras' layer."""

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            return super().call(x)
        rows = ops.convert_to_tensor(adaptive_bins(height, self.output_size[0]), dtype=x.dtype)
        cols = ops.convert_to_tensor(adaptive_bins(width, self.output_size[1]), dtype=x.dtype)
        return apply_separable(x, rows, cols, (height, width), tuple(self.output_size))


def align_corners_matrix(size_in, size_out, dtype):
    """`(size_out, size_in)` interpolation matrix of bilinear resizing with `align_corners=True` (torch's
    `F.interpolate(..., mode="bilinear", align_corners=True)`): output i samples the input at
    `i * (in - 1) / (out - 1)` (0 for one output), and its weight on input j is the hat `max(0, 1 - |src - j|)`,
    which is the two-neighbour linear weight. Built with `keras.ops`, so sizes unknown when traced work too;
    an input of 1 (PPM's 1x1 bin) gives a column of ones: replication."""
    scale = ops.cast(size_in - 1, dtype) / ops.cast(ops.maximum(size_out - 1, 1), dtype)
    source = ops.cast(ops.arange(size_out), dtype) * scale
    return ops.relu(1.0 - ops.abs(source[:, None] - ops.cast(ops.arange(size_in), dtype)[None, :]))


def spatial_size(x) -> tuple:
    """Height and width: Python ints where the traced shape knows them, so a model built for one size computes
    its interpolation matrices as constants (an exported graph then holds no shape arithmetic, which LiteRT's
    converter and OpenVINO otherwise keep as dynamic tensors and dangling outputs); tensors where it does not."""
    return tuple(n if n is not None else ops.shape(x)[axis] for axis, n in ((1, x.shape[1]), (2, x.shape[2])))


@keras.saving.register_keras_serializable(package="twins")
class AlignCornersResize(layers.Layer):
    """Bilinear resize with `align_corners=True`, NHWC, one implementation for every backend: two
    interpolation matrices (`align_corners_matrix`, `apply_separable`). Keras' resize ops have no
    align-corners mode (their bilinear is half-pixel, torch's `align_corners=False`). Called on one tensor it
    scales by `zoom` corner to corner, `(size - 1) * zoom + 1` (PSPNet's output of `(H - 1) / 8 * zoom + 1`);
    called on `[x, like]` it resizes `x` to `like`'s height and width (the PPM's branches)."""

    def __init__(self, zoom=None, **kwargs):
        super().__init__(**kwargs)
        self.zoom = zoom

    def target_size(self, shape, like_shape=None):
        if like_shape is not None:
            return like_shape[1], like_shape[2]
        return tuple(None if n is None else (n - 1) * self.zoom + 1 for n in shape[1:3])

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            x, like = inputs
            out_h, out_w = spatial_size(like)
        else:
            x = inputs
            out_h, out_w = ((n - 1) * self.zoom + 1 for n in spatial_size(x))
        in_h, in_w = spatial_size(x)
        rows = align_corners_matrix(in_h, out_h, x.dtype)
        cols = align_corners_matrix(in_w, out_w, x.dtype)
        return apply_separable(x, rows, cols, (in_h, in_w), (out_h, out_w))

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, list) and isinstance(input_shape[0], (list, tuple)):
            shape, like = input_shape
            return (shape[0], *self.target_size(shape, like), shape[3])
        return (input_shape[0], *self.target_size(input_shape), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "zoom": self.zoom}


@keras.saving.register_keras_serializable(package="twins")
class LeakyReLU(layers.LeakyReLU):
    """torch's LeakyReLU: `x` where `x > 0`, else `negative_slope * x`, the slope multiplied in the input's
    dtype. Keras' own layer calls tensorflow's LeakyRelu op there, which keeps the slope as a float32
    attribute (0.2 becomes 0.2000000030): a float64 model then computes its negative side 1.5e-8 off
    torch's, which the float64 parity checks see (saliency_unet's loss 7.6e-11 against a bound of 1e-11).
    The slope has no default here: Keras' is 0.3, torch's 0.01."""

    def __init__(self, negative_slope, **kwargs):
        super().__init__(negative_slope=negative_slope, **kwargs)

    def call(self, inputs):
        slope = ops.convert_to_tensor(np.asarray(self.negative_slope, keras.backend.standardize_dtype(inputs.dtype)))
        return ops.where(ops.greater(inputs, 0), inputs, ops.multiply(inputs, slope))


@keras.saving.register_keras_serializable(package="twins")
class Logits(layers.Layer):
    """Keras-only: returns its first input, the logits, unchanged. The other inputs, aux logits, are taken
    only so that the aux heads are part of the model's graph (a functional model keeps just the layers
    its outputs depend on): their weights are the model's, and `get_layer("AuxLogits-fc")` (inception_v3) or
    `get_layer("aux")` (pspnet) finds them for `keras_impl.training.training_view`."""

    def call(self, inputs):
        return inputs[0]

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def torch_uniform(fan_in: int):
    """PyTorch's default Conv2d/Linear init: kaiming_uniform_(a=sqrt(5)) for the weight and the bias
    are both U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def on_jax_cpu() -> bool:
    """Keras runs on jax and jax computes on the CPU (where XLA's padded convolution is slow; see `Conv2D`)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


_VALID_CONV = []


def valid_conv_with_padded_input_grad():
    """`f(x, w, stride)`: jax's undilated 'valid' NHWC convolution, whose gradient for `x` is a stride-1 'valid'
    convolution of the output gradient, dilated by the stride and padded explicitly (kept so by
    `optimization_barrier`), with the flipped kernel; jax's own rule hands XLA a padded (and for a stride over 1,
    input-dilated) convolution. The weight gradient is jax's own. Built once, on first use."""
    if not _VALID_CONV:
        import functools

        import jax
        import jax.numpy as jnp

        numbers = ("NHWC", "HWIO", "NHWC")

        def conv(x, w, stride):
            return jax.lax.conv_general_dilated(x, w, stride, "VALID", dimension_numbers=numbers)

        @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
        def valid_conv(x, w, stride):
            return conv(x, w, stride)

        def forward(x, w, stride):
            return conv(x, w, stride), (x, w)

        def backward(stride, saved, grad):
            x, w = saved
            # Each input row the forward reached (the last `extra` rows it did not) gets the kernel rows that saw it.
            pads = [(0, 0, 0)]
            for axis, (k, s) in enumerate(zip(w.shape[:2], stride), 1):
                extra = x.shape[axis] - k - (grad.shape[axis] - 1) * s
                pads.append((k - 1, k - 1 + extra, s - 1))
            padded = jax.lax.optimization_barrier(jax.lax.pad(grad, jnp.zeros((), grad.dtype), pads + [(0, 0, 0)]))
            grad_x = conv(padded, jnp.flip(w, (0, 1)).swapaxes(2, 3), (1, 1))
            return grad_x, jax.vjp(lambda w: conv(x, w, stride), w)[1](grad)[0]

        valid_conv.defvjp(forward, backward)
        _VALID_CONV.append(valid_conv)
    return _VALID_CONV[0]


@keras.saving.register_keras_serializable(package="twins")
class Conv2D(layers.Conv2D):
    """Keras' Conv2D, the twins' every convolution ('valid': the padding is an explicit `ZeroPadding2D` before it).
    On jax on the CPU, an undilated conv whose output map is smaller than its kernel (a ResNet's layer4 at 64x64:
    2x2 maps, 3x3 kernels) keeps its padded input as it is (`jax.lax.optimization_barrier`) and takes its input
    gradient as a 'valid' convolution of the explicitly padded output gradient (`valid_conv_with_padded_input_grad`).
    XLA otherwise folds the pad into the convolution, jax's own input gradient is a padded convolution, and XLA's
    CPU convolution with padding takes a slow path on such maps: a 3x3 conv of 512 channels on a 2x2 map at batch
    32 took 270 ms forward against 6 ms on the padded map, its input gradient 442 ms against 30 ms for both
    gradients; resnet18's training step at 64x64 and batch 32 3.2 s against 0.46 s. The same numbers on every
    backend (`parity_tests/test_conv.py`); elsewhere the layer is Keras' own."""

    def convolution_op(self, inputs, kernel):
        if self.padded_conv_is_slow_here(inputs.shape):
            import jax

            inputs = jax.lax.optimization_barrier(ops.convert_to_tensor(inputs))
            return valid_conv_with_padded_input_grad()(inputs, ops.convert_to_tensor(kernel), tuple(self.strides))
        return super().convolution_op(inputs, kernel)

    def padded_conv_is_slow_here(self, shape) -> bool:
        if (self.dilation_rate != (1, 1) or self.groups != 1 or self.padding != "valid"
                or self.data_format != "channels_last" or not on_jax_cpu()):
            return False
        spatial = tuple(shape[1:3])
        if None in spatial:
            return False
        return any((n - k) // s + 1 < k for n, k, s in zip(spatial, self.kernel_size, self.strides))


@keras.saving.register_keras_serializable(package="twins")
class OneFilterConv2D(Conv2D):
    """Conv2D with one filter and a kernel larger than 1x1 (the saliency U-Net's output conv `conv_0`), the same
    layer as Keras' on tensorflow and jax. On the torch backend Keras hands torch the kernel as a permuted view
    of its (kh, kw, in, 1) variable, which for one filter is channels-last contiguous as it stands, and torch
    2.13's CPU convolution in float64 then fails its backward ("slow_conv2d: grad_weight must be contiguous";
    plain torch: `conv2d(x, w.permute(3, 2, 0, 1))` with `w` of shape (3, 3, C, 1), double). There it
    convolves with the kernel and an all-zero second filter and keeps the first output: the same values and
    gradients, and a kernel torch copies before the convolution."""

    def convolution_op(self, inputs, kernel):
        if keras.backend.backend() != "torch":
            return super().convolution_op(inputs, kernel)
        padded = ops.concatenate([kernel, ops.zeros_like(kernel)], axis=-1)
        return super().convolution_op(inputs, padded)[..., :1]


def conv2d(x, filters, kernel, stride=1, padding=0, dilation=1, use_bias=False, *, name,
           kernel_initializer=None, bias_initializer="zeros"):
    """Conv2d twin, by default as torchvision's ResNets have it (no bias, He fan-out); the other
    models pass their own initialisers. Padding is always explicit (ZeroPadding2D + 'valid'): Keras'
    'same' pads a stride-2 conv asymmetrically (extra pixel bottom/right) where torch pads
    symmetrically."""
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}-pad")(x)
    conv = OneFilterConv2D if filters == 1 and kernel != 1 and kernel != (1, 1) else Conv2D
    return conv(
        filters,
        kernel,
        strides=stride,
        padding="valid",
        dilation_rate=dilation,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer or he_fan_out(),
        bias_initializer=bias_initializer,
        name=name,
    )(x)


def conv_bn(x, filters, kernel, stride=1, padding=0, dilation=1, *, conv_name, bn_name):
    x = conv2d(x, filters, kernel, stride, padding, dilation, name=conv_name)
    return BatchNorm(name=bn_name)(x)


def max_pool(x, pool, stride, padding=0, *, name):
    """MaxPool2d twin with explicit padding. Zero padding equals torch's -inf padding here because
    every caller pools a post-ReLU (>= 0) tensor."""
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}-pad")(x)
    return layers.MaxPooling2D(pool, strides=stride, padding="valid", name=name)(x)


def dense(x, units, *, name, kernel_initializer=None, bias_initializer=None):
    """Linear twin, by default with torch's default init (`torch_uniform`) for both tensors."""
    fan_in = x.shape[-1]
    return layers.Dense(
        units,
        kernel_initializer=kernel_initializer or torch_uniform(fan_in),
        bias_initializer=bias_initializer or torch_uniform(fan_in),
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="twins")
class ImageCheck(layers.Layer):
    """Twin of `torch_impl.common.check_nchw`: refuses a batch that is not NHWC with the expected
    channel count before it reaches the first conv, whose own error would quote a padded shape.

    The model input leaves the channel axis open (see `image_input`) so that an NCHW batch reaches
    this check, which names the layout mistake, instead of Keras' generic input-spec error; the
    output declares `channels`, which is what the first conv is built for. A fixed `input_shape`
    outside `min_size`..`max_size` is refused when the model is built, not by a layer deep inside it."""

    def __init__(self, channels=3, model="model", min_size=1, max_size=None, multiple=1, why="", offset=0, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.model, self.min_size, self.max_size = channels, model, min_size, max_size
        self.multiple, self.why, self.offset = multiple, why, offset

    def call(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4:
            raise ValueError(
                f"{self.model} expects a 4-D NHWC batch of shape (N, H, W, {self.channels}), got shape {shape}"
            )
        if shape[-1] is not None and shape[-1] != self.channels:
            hint = ""
            if shape[1] == self.channels:
                hint = " This looks like NCHW (channels first); keras_impl models take NHWC: x.transpose(0, 2, 3, 1)."
            raise ValueError(
                f"{self.model} expects NHWC input with {self.channels} channels, shape (N, H, W, {self.channels}); "
                f"got shape {shape}.{hint}"
            )
        self.check_size(shape)
        return x

    def check_size(self, shape):
        height, width = shape[1:3]
        if height is None or width is None:
            return
        problem = size_problem(self.model, height, width, min_size=self.min_size, max_size=self.max_size,
                               multiple=self.multiple, offset=self.offset, why=self.why)
        if problem:
            raise ValueError(problem)

    def compute_output_shape(self, input_shape):
        self.check_size(input_shape)
        return (*input_shape[:-1], self.channels)

    def compute_output_spec(self, x):
        return keras.KerasTensor(self.compute_output_shape(x.shape), dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "model": self.model, "min_size": self.min_size,
                "max_size": self.max_size, "multiple": self.multiple, "why": self.why, "offset": self.offset}


def image_input(input_shape=(None, None, 3), model="model", name="image", min_size=1, max_size=None, multiple=1,
                why="", offset=0):
    """`(inputs, checked)`: the NHWC model input and the same tensor after `ImageCheck`. The input's
    channel axis is left open for the check's sake; its dtype follows the dtype policy's variables
    (keras.Input alone would cast a float64 batch to floatx). `min_size` is the registry's
    `min_input_size`, refused by name rather than by a pooling layer's negative-size error; `max_size`
    the registry's `max_input_size`, `multiple` its `size_multiple`."""
    height, width, channels = input_shape
    inputs = keras.Input(shape=(height, width, None), dtype=keras.config.dtype_policy().variable_dtype, name=name)
    return inputs, ImageCheck(channels, model, min_size, max_size, multiple, why, offset, name="image_check")(inputs)
