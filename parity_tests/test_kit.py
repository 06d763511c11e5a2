"""`keras_impl.layers`, the kit: each layer against the torch module of the same name, over a grid of its options
(odd, even and non-square maps; every padding, ceil_mode, dilation, groups and count_include_pad combination the
signature allows, at small sizes), in eval and train mode: the output, and the gradients of a loss with respect to
the input and to every weight (torch's weights copied through the bridge, `keras_impl.weights`, so its grouped and
depthwise rules are checked on the way), on this Keras backend. Then a `.keras` round trip of every layer, torch's
constructor errors, and a deliberate break of each hazard shown failing."""
from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.keras
SIZES = [(7, 7), (8, 6), (5, 9)]  # odd, even, non-square
RTOL = ATOL = 2e-5


def keras_loss_and_grads(layer, x: np.ndarray, r: np.ndarray, training: bool):
    """`(out, d loss/dx, {variable.path: d loss/dv})` of `loss = sum(layer(x) * r)`, through this backend's
    autodiff; the layer's state (BatchNorm's running statistics) updated as a call updates it."""
    import keras
    from keras import ops

    variables = layer.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = layer(xt, training=training)
            loss = tf.reduce_sum(out * r)
        grads = tape.gradient(loss, [xt, *variables])
    elif backend == "jax":
        import jax

        state = layer.non_trainable_variables
        options = {"training": training} if "training" in inspect.signature(layer.call).parameters else {}

        def loss_fn(inputs, trainable):
            out, new_state = layer.stateless_call(trainable, [v.value for v in state], inputs, **options)
            return (out * r).sum(), (out, new_state)

        # one compiled program per case (op by op, jax compiles every op for every shape: 5 minutes for the grid)
        (_, (out, new_state)), grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))(
            jax.numpy.asarray(x), [v.value for v in variables])
        grads = [grads[0], *grads[1]]
        for variable, value in zip(state, new_state):
            variable.assign(value)
    else:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        for variable in variables:
            variable.value.grad = None
        out = layer(xt, training=training)
        (out * torch.as_tensor(r)).sum().backward()
        grads = [xt.grad, *[v.value.grad for v in variables]]
    numpy = [None if g is None else ops.convert_to_numpy(g) for g in grads]
    return ops.convert_to_numpy(out), numpy[0], {v.path: g for v, g in zip(variables, numpy[1:])}


def torch_loss_and_grads(module, x: np.ndarray, r: np.ndarray, training: bool):
    """The same for the torch module on the NCHW transpose of `x`; the output and gradients back in NHWC, the
    weights' gradients by state_dict key."""
    import torch

    module.train(training)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    out = module(xt)
    nhwc = out.permute(0, 2, 3, 1) if out.dim() == 4 else out
    assert tuple(nhwc.shape) == r.shape, f"output shape: torch {tuple(nhwc.shape)}, the kit's {r.shape}"
    (nhwc * torch.as_tensor(r)).sum().backward()
    grads = {k: p.grad.numpy() for k, p in module.named_parameters() if p.grad is not None}
    return nhwc.detach().numpy(), xt.grad.numpy().transpose(0, 2, 3, 1), grads


def compare(kit_layer, module, shape, training=False, seed=0, wrap=None):
    """Build the kit layer on `shape` (NHWC), copy the torch module's weights into it through the bridge, and
    compare the output and every gradient; in training, BatchNorm's updated running statistics too."""
    import keras
    import torch

    from keras_impl import weights
    from keras_impl.common import initial_values_not_drawn

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype("float32")
    inputs = keras.Input(shape[1:], batch_size=shape[0])
    with initial_values_not_drawn():  # torch's values are loaded next (on jax, no program compiled per draw)
        model = keras.Model(inputs, kit_layer(inputs))
    torch.manual_seed(seed)
    holder = torch.nn.ModuleDict({"m": module})
    with torch.no_grad():  # random BatchNorm statistics and affine weights, so eval mode is not the identity
        for name, buffer in module.named_buffers():
            if name in ("running_mean", "running_var"):
                buffer.copy_(torch.rand_like(buffer) + (0.5 if name == "running_var" else -0.5))
        for name, p in module.named_parameters():
            if isinstance(module, torch.nn.BatchNorm2d):
                p.copy_(torch.rand_like(p) + 0.5)
    state = {k: v.detach().numpy() for k, v in holder.state_dict().items() if not k.endswith("num_batches_tracked")}
    weights.load_torch_state_dict(model, state)
    out_shape = tuple(model.output.shape[1:])
    r = rng.standard_normal((shape[0], *out_shape)).astype("float32")
    k_out, k_dx, k_grads = keras_loss_and_grads(kit_layer, x, r, training)
    t_out, t_dx, t_grads = torch_loss_and_grads(module, x, r, training)
    assert k_out.shape == t_out.shape, (k_out.shape, t_out.shape)
    np.testing.assert_allclose(k_out, t_out, rtol=RTOL, atol=ATOL, err_msg="output")
    np.testing.assert_allclose(k_dx, t_dx, rtol=RTOL, atol=ATOL, err_msg="input gradient")
    k_torch = weights.to_torch_layout(model, k_grads)
    assert set(k_torch) == {f"m.{k}" for k in t_grads}, (sorted(k_torch), sorted(t_grads))
    for key, grad in t_grads.items():
        np.testing.assert_allclose(k_torch[f"m.{key}"], grad, rtol=RTOL, atol=ATOL, err_msg=f"gradient of {key}")
    if training:
        after = weights.torch_state_dict(model)
        for key, value in holder.state_dict().items():
            if "running" in key:
                np.testing.assert_allclose(after[key], value.numpy(), rtol=RTOL, atol=ATOL, err_msg=key)
    return model


CONV = [  # (kernel, stride, padding, dilation, groups, out, bias)
    (1, 1, 0, 1, 1, 6, True), (3, 1, 1, 1, 1, 6, True), (3, 2, 1, 1, 1, 6, False), (3, 2, 0, 1, 1, 5, True),
    ((3, 2), (2, 1), (1, 0), 1, 1, 6, True), (3, 1, 2, 2, 1, 6, True), (3, 2, (2, 1), (2, 1), 1, 6, True),
    (3, 1, "same", 1, 1, 6, True), (4, 1, "same", 1, 1, 6, True), (3, 1, "same", 2, 1, 6, False),
    (2, 1, "valid", 1, 1, 6, True), (3, 1, 1, 1, 2, 6, True), (3, 2, 1, 1, 2, 4, False), (3, 1, 1, 1, 4, 4, True),
    (3, 2, 1, 1, 4, 8, False), (5, 2, 2, 1, 4, 4, True), (3, 1, 2, 2, 4, 4, True),
]


def sized(cases):
    """Each case with the next of the odd, even and non-square sizes in turn."""
    return [(case, SIZES[i % len(SIZES)]) for i, case in enumerate(cases)]


def test_conv2d():
    """Every kernel / stride / padding (ints, pairs, 'same', 'valid') / dilation / groups (1, 2, depthwise with a
    multiplier of 1 and 2) case, with and without a bias."""
    import torch

    from keras_impl import layers

    for (kernel, stride, padding, dilation, groups, out, bias), size in sized(CONV):
        module = torch.nn.Conv2d(4, out, kernel, stride, padding, dilation, groups, bias)
        case = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, out=out)
        try:
            compare(layers.Conv2d(out, kernel, stride, padding, dilation, groups, bias, name="m"), module,
                    (2, *size, 4))
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None


def test_conv_transpose2d():
    import torch

    from keras_impl import layers

    for (kernel, stride, padding, output_padding, bias), size in sized([
            (4, 2, 1, 0, True), (3, 2, 1, 1, False), (3, 1, 1, 0, True), (2, 3, 0, 2, True),
            ((3, 4), (2, 1), (1, 2), (1, 0), True), (5, 2, 2, 1, True), (1, 2, 0, 1, False), (3, 2, 0, 1, True)]):
        module = torch.nn.ConvTranspose2d(4, 3, kernel, stride, padding, output_padding, bias=bias)
        try:
            compare(layers.ConvTranspose2d(3, kernel, stride, padding, output_padding, bias, name="m"), module,
                    (2, *size, 4))
        except AssertionError as error:
            raise AssertionError(f"{(kernel, stride, padding, output_padding)}: {error}") from None


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batchnorm2d(training):
    """Eval: the running statistics; train: the batch's, and the running ones moved as torch moves them (the
    unbiased variance, momentum 0.1), also when the layer is frozen (not trainable: torch's meaning)."""
    import torch

    from keras_impl import layers

    for size in SIZES:
        compare(layers.BatchNorm2d(4, name="m"), torch.nn.BatchNorm2d(4), (3, *size, 4), training)
    layer = layers.BatchNorm2d(4, eps=1e-3, momentum=0.3, name="m")
    compare(layer, torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.3), (2, 5, 4, 4), training)
    frozen = layers.BatchNorm2d(4, name="m")
    frozen.trainable = False
    module = torch.nn.BatchNorm2d(4).requires_grad_(False)
    import keras

    inputs = keras.Input((5, 6, 4), batch_size=2)
    keras.Model(inputs, frozen(inputs))
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 4)).astype("float32")
    k = keras.ops.convert_to_numpy(frozen(x, training=training))
    module.train(training)
    t = module(torch.tensor(x.transpose(0, 3, 1, 2).copy())).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(k, t, rtol=RTOL, atol=ATOL)


def test_linear_behind_flatten_takes_torchs_weights_as_they_are():
    """Flatten reads an NHWC map in torch's C*H*W order, so Linear's weight is torch's, untouched (the bridge's
    rule for a Dense behind Keras' own Flatten permutes it instead)."""
    import keras
    import torch

    from keras_impl import layers, weights

    for shape in [(2, 3, 5, 4), (2, 7)]:
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape[1:])), 5))
        inputs = keras.Input(shape[1:], batch_size=shape[0])
        model = keras.Model(inputs, layers.Linear(5, name="1")(layers.Flatten(name="0")(inputs)))
        weights.load_torch_state_dict(model, {k: v.detach().numpy() for k, v in module.state_dict().items()})
        slot = next(s for s in weights.slots(model) if s.key == "1.weight")
        assert slot.rule == "transpose (in, out) -> (out, in)", slot.rule
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        torch_x = torch.tensor(x.transpose(0, 3, 1, 2).copy() if len(shape) == 4 else x)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), module(torch_x).detach().numpy(),
                                   rtol=RTOL, atol=ATOL)
    for bias in (True, False):  # Linear on its own, on an NHWC map's last axis, gradients included
        class Last(torch.nn.Linear):  # torch's Linear on the NCHW map's channel axis
            def forward(self, x):
                return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        compare(layers.Linear(3, bias=bias, name="m"), Last(4, 3, bias=bias), (2, 3, 2, 4))


POOLS = [  # (kernel, stride, padding)
    (2, None, 0), (3, 2, 0), (3, 2, 1), (2, 1, 1), ((3, 2), (2, 1), (1, 0)), (3, 3, 1), (1, 2, 0), (4, 3, 2),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pools(kind):
    """Every kernel / stride / padding case with ceil_mode off and on (and, averaging, count_include_pad on and
    off), on the odd, even and non-square maps; the input's negative values show -inf padding from zeros."""
    import torch

    from keras_impl import layers

    includes = (True, False) if kind == "avg" else (None,)
    for ((kernel, stride, padding), ceil, include), size in sized(list(itertools.product(POOLS, (False, True),
                                                                                          includes))):
        if kind == "max":
            kit = layers.MaxPool2d(kernel, stride, padding, ceil, name="m")
            module = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
        else:
            kit = layers.AvgPool2d(kernel, stride, padding, ceil, include, name="m")
            module = torch.nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil, count_include_pad=include)
        try:
            compare(kit, module, (2, *size, 3))
        except AssertionError as error:
            raise AssertionError(f"{(kernel, stride, padding, ceil, include, size)}: {error}") from None


def test_adaptive_avg_pool2d():
    import torch

    from keras_impl import layers

    for output_size, size in sized([1, 3, (2, 4), (None, 2), 7, 2, (3, 1)]):
        try:
            compare(layers.AdaptiveAvgPool2d(output_size, name="m"), torch.nn.AdaptiveAvgPool2d(output_size),
                    (2, *size, 3))
        except AssertionError as error:
            raise AssertionError(f"{(output_size, size)}: {error}") from None


UPSAMPLES = [
    dict(scale_factor=2), dict(scale_factor=3, mode="nearest"), dict(size=(11, 4)), dict(scale_factor=1.5),
    dict(scale_factor=2, mode="bilinear"), dict(scale_factor=2, mode="bilinear", align_corners=True),
    dict(size=(4, 13), mode="bilinear"), dict(size=(4, 13), mode="bilinear", align_corners=True),
    dict(scale_factor=(0.5, 2.5), mode="bilinear"), dict(scale_factor=1.7, mode="nearest"),
]


def test_upsample():
    import torch

    from keras_impl import layers

    for options, size in sized(UPSAMPLES + [dict(size=(6, 5), mode="nearest"), dict(scale_factor=3, mode="bilinear")]):
        try:
            compare(layers.Upsample(**options, name="m"), torch.nn.Upsample(**options), (2, *size, 3))
        except AssertionError as error:
            raise AssertionError(f"{(options, size)}: {error}") from None


def test_activations_identity_and_dropout_in_eval():
    import torch

    from keras_impl import layers

    pairs = [(layers.ReLU(name="m"), torch.nn.ReLU()), (layers.ReLU6(name="m"), torch.nn.ReLU6()),
             (layers.LeakyReLU(name="m"), torch.nn.LeakyReLU()),
             (layers.LeakyReLU(0.2, name="m"), torch.nn.LeakyReLU(0.2)),
             (layers.Hardswish(name="m"), torch.nn.Hardswish()), (layers.SiLU(name="m"), torch.nn.SiLU()),
             (layers.Sigmoid(name="m"), torch.nn.Sigmoid()), (layers.Identity(name="m"), torch.nn.Identity()),
             (layers.Dropout(name="m"), torch.nn.Dropout()), (layers.Dropout2d(0.3, name="m"), torch.nn.Dropout2d(0.3))]
    for kit, module in pairs:
        compare(kit, module, (2, 5, 6, 3))


def test_dropout_in_training_zeroes_and_scales_as_torch():
    """Dropout's draws are Keras', not torch's: what is compared is the rule, elements (or whole channels) zeroed
    and the rest scaled by 1 / (1 - p)."""
    import keras

    from keras_impl import layers

    x = np.random.default_rng(0).uniform(1, 2, (4, 6, 7, 16)).astype("float32")
    for layer, per_channel in [(layers.Dropout(0.25), False), (layers.Dropout2d(0.25), True)]:
        out = keras.ops.convert_to_numpy(layer(x, training=True))
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / 0.75, rtol=1e-6)
        assert 0.05 < 1 - kept.mean() < 0.5
        if per_channel:
            assert (kept.all(axis=(1, 2)) | ~kept.any(axis=(1, 2))).all(), "Dropout2d zeroes whole channels"


def test_every_layer_survives_a_keras_file_round_trip(tmp_path):
    import keras

    from keras_impl import layers

    inputs = keras.Input((9, 8, 4))
    x = layers.Conv2d(8, 3, 2, 1, groups=4, name="conv")(inputs)
    x = layers.BatchNorm2d(8, name="bn")(x)
    x = layers.LeakyReLU(0.1)(layers.ReLU6()(layers.Hardswish()(layers.SiLU()(x))))
    x = layers.ConvTranspose2d(6, 3, 2, 1, 1, name="up")(x)
    x = layers.Upsample(scale_factor=1.5, mode="bilinear")(layers.Upsample(size=(7, 9))(x))
    x = layers.MaxPool2d(3, 2, 1, ceil_mode=True)(layers.AvgPool2d(3, 1, 1, count_include_pad=False)(x))
    x = layers.Dropout2d(0.2)(layers.Identity()(layers.Sigmoid()(layers.ReLU()(x))))
    x = layers.Linear(5, name="fc")(layers.Dropout(0.1)(layers.Flatten()(layers.AdaptiveAvgPool2d((2, None))(x))))
    model = keras.Model(inputs, x)
    path = tmp_path / "kit.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert [type(layer) for layer in again.layers] == [type(layer) for layer in model.layers]
    batch = np.random.default_rng(0).standard_normal((2, 9, 8, 4)).astype("float32")
    np.testing.assert_allclose(again.predict(batch, verbose=0), model.predict(batch, verbose=0), rtol=1e-6, atol=1e-6)
    for layer in model.layers[1:]:
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config(), layer.name


def test_torchs_argument_errors_and_a_wrong_input_are_refused_clearly():
    import keras

    from keras_impl import layers

    refusals = [
        (lambda: layers.Conv2d(6, 3, stride=2, padding="same"), "padding='same' is not supported for strided"),
        (lambda: layers.Conv2d(6, 3, groups=4), "out_channels (6) must be divisible by groups (4)"),
        (lambda: layers.Conv2d(6, 3, padding="full"), "must be an int, a pair, 'valid' or 'same'"),
        (lambda: layers.ConvTranspose2d(6, 3, stride=2, output_padding=2), "output_padding must be smaller than"),
        (lambda: layers.MaxPool2d(2, padding=2), "padding should be at most half of kernel_size"),
        (lambda: layers.Upsample(), "give exactly one of size and scale_factor"),
        (lambda: layers.Upsample(scale_factor=2, align_corners=True), "align_corners only goes with"),
        (lambda: layers.Upsample(scale_factor=2, mode="bicubic"), "mode must be 'nearest' or 'bilinear'"),
        (lambda: layers.Conv2d(6, (3, 3, 3)), "kernel_size must be an int or a pair"),
    ]
    for make, message in refusals:
        with pytest.raises(ValueError, match=None) as error:
            make()
        assert message in str(error.value), (message, str(error.value))
    inputs = keras.Input((8, 8, 6))
    with pytest.raises(ValueError) as error:
        layers.BatchNorm2d(4, name="bn")(inputs)
    assert "built for num_features=4, but its input has 6 channels" in str(error.value)
    with pytest.raises(ValueError) as error:
        layers.Conv2d(8, 3, groups=4, name="conv")(inputs)
    assert "in_channels (6, the input's last axis) must be divisible by groups (4)" in str(error.value)


@pytest.mark.parametrize("hazard", ["keras-batchnorm", "keras-same-padding", "keras-floor-pool", "zero-pad-max",
                                    "keras-flatten", "half-pixel-resize", "keras-leaky-slope"])
def test_each_hazard_broken_fails_the_comparison(hazard):
    """Each hazard the kit handles, written as Keras' own layer does it, fails the same comparison the kit
    passes: the grid above can see a break in what it checks."""
    import keras
    import torch

    size = (2, 7, 7, 4)
    if hazard == "keras-batchnorm":
        kit, module, training = keras.layers.BatchNormalization(name="m"), torch.nn.BatchNorm2d(4), True
    elif hazard == "keras-same-padding":
        kit = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="m")
        module, training = torch.nn.Conv2d(4, 6, 3, 2, 1), False
        size = (2, 8, 8, 4)
    elif hazard == "keras-floor-pool":
        kit, training = keras.layers.MaxPooling2D(3, 2, name="m"), False
        module = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
        size = (2, 8, 8, 4)
    elif hazard == "zero-pad-max":
        kit = keras.Sequential([keras.layers.ZeroPadding2D(1), keras.layers.MaxPooling2D(3, 2)], name="m")
        module, training = torch.nn.MaxPool2d(3, 2, 1), False
    elif hazard == "keras-flatten":
        kit, module, training = keras.layers.Flatten(name="m"), torch.nn.Flatten(), False
        size = (2, 3, 2, 4)
    elif hazard == "half-pixel-resize":
        kit = keras.layers.UpSampling2D(2, interpolation="bilinear", name="m")
        module, training = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), False
    else:
        kit, module, training = keras.layers.LeakyReLU(name="m"), torch.nn.LeakyReLU(), False
    with pytest.raises(AssertionError):
        compare(kit, module, size, training)


def test_the_bridge_maps_keras_own_depthwise_kernel_to_torchs_grouped_weight():
    """Keras' DepthwiseConv2D holds (kh, kw, in, m), torch's depthwise Conv2d (groups=in) (in * m, 1, kh, kw) with
    output channel c * m + j: the bridge's rule, checked through the same comparison (weights loaded through it,
    gradients mapped back); the output channels taken in the other order (j * in + c) fail it."""
    import keras
    import torch

    from keras_impl import weights

    for multiplier, size in [(1, (7, 6)), (2, (5, 9))]:
        compare(keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=multiplier, name="m"),
                torch.nn.Conv2d(4, 4 * multiplier, 3, 2, groups=4), (2, *size, 4))
    rule = weights._depthwise_rules

    def wrong(layer):
        kh, kw, channels, m = tuple(layer.kernel.shape)
        return (lambda k: k.transpose(3, 2, 0, 1).reshape(channels * m, 1, kh, kw),
                lambda t: t.reshape(m, channels, kh, kw).transpose(2, 3, 1, 0), "wrong")

    try:
        weights._depthwise_rules = wrong
        with pytest.raises(AssertionError):
            compare(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="m"), torch.nn.Conv2d(4, 8, 3, groups=4),
                    (2, 7, 7, 4))
    finally:
        weights._depthwise_rules = rule
