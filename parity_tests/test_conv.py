"""The twins' convolution (`keras_impl.common.conv2d`: an explicit `ZeroPadding2D`, then a 'valid' `Conv2D`) on
jax on the CPU, where its output map is smaller than its kernel: the padded tensor reaches the convolution as it
is, and the input gradient is a 'valid' convolution of the padded output gradient (XLA's CPU convolution takes a
slow path when it pads such a map: resnet18's training step at 64x64 and batch 32 took 3.2 s against 0.46 s).
The layers compute what Keras' own compute, values and gradients, on every backend."""
from __future__ import annotations

import re

import numpy as np
import pytest

from parity_tests.conftest import BACKEND

# (map height, width, kernel, stride, padding): odd, even and non-square maps, maps smaller than the kernel, a
# stride that leaves the last rows unread; each has an output map smaller than its kernel in an axis.
CASES = [(2, 2, 3, 1, 1), (5, 4, 3, 2, 1), (7, 7, 7, 2, 3), (6, 9, 3, 2, 0), (4, 4, 5, 3, 2)]


def models(case, ours: bool):
    """A 1x1 conv (Keras' own, its kernel's gradient passes through the next conv's input gradient), then the
    padded conv: the twins' helper, or Keras' ZeroPadding2D and Conv2D."""
    import keras

    from keras_impl.common import conv2d

    height, width, kernel, stride, padding = case
    inputs = keras.Input((height, width, 3))
    x = keras.layers.Conv2D(4, 1, name="first")(inputs)
    if ours:
        x = conv2d(x, 5, kernel, stride, padding, name="second")
    else:
        x = keras.layers.ZeroPadding2D(padding)(x) if padding else x
        x = keras.layers.Conv2D(5, kernel, strides=stride, use_bias=False, name="second")(x)
    return keras.Model(inputs, x)


def loss_and_grads(model, x):
    import keras

    from keras_impl.training import value_and_grad_fn

    step = value_and_grad_fn(model, lambda out, y: keras.ops.sum(keras.ops.multiply(keras.ops.sin(out), y)))
    y = np.cos(np.arange(np.prod(model.output.shape[1:]))).reshape((1, *model.output.shape[1:]))
    loss, grads = step(x, np.repeat(y, len(x), axis=0).astype("float32"))
    return [keras.ops.convert_to_numpy(keras.ops.stop_gradient(t)) for t in [loss, *grads]]


@pytest.mark.keras
@pytest.mark.parametrize("case", CASES, ids=lambda c: "h{}w{}k{}s{}p{}".format(*c))
def test_the_twins_conv_computes_what_keras_conv_computes(case):
    """Output, loss and every gradient (the first conv's kernel's through the padded conv's input gradient) of
    the twins' conv against Keras' own layers on the same weights, on this backend."""
    import keras

    rng = np.random.RandomState(0)
    x = rng.randn(2, case[0], case[1], 3).astype("float32")
    ours, theirs = models(case, True), models(case, False)
    for a, b in zip(ours.weights, theirs.weights):
        b.assign(keras.ops.convert_to_numpy(a))
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    for mine, want in zip(loss_and_grads(ours, x), loss_and_grads(theirs, x)):
        np.testing.assert_allclose(mine, want, rtol=1e-4, atol=1e-4)


def padded_convolutions(model, x) -> list[str]:
    """The window of every convolution XLA compiled for the model's loss and gradients that pads its input
    (a negative pad, a crop, is not padding)."""
    import jax
    import jax.numpy as jnp

    def loss(trainable, x):
        return jnp.sum(jnp.sin(model.stateless_call(trainable, [], x)[0]))

    trainable = [v.value for v in model.trainable_variables]
    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(trainable, x).compile().as_text()
    windows = re.findall(r"convolution\(.*?window=\{([^}]*)\}", text)
    assert windows, "no convolution in the compiled program"
    return [w for w in windows if re.search(r"pad=\S*(?<![-\d])[1-9]", w)]


@pytest.mark.keras
@pytest.mark.skipif(BACKEND != "jax", reason="the program XLA compiles: Keras on jax")
def test_on_jax_no_compiled_convolution_pads_its_input():
    """The compiled loss-and-gradient program of the twins' convs has no padded convolution; the same model
    with Keras' own ZeroPadding2D and Conv2D has one (XLA folds the pad into the forward conv, and jax's input
    gradient pads): the check sees what it looks for."""
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("the workaround is for XLA's CPU convolution")
    x = np.ones((2, 4, 4, 3), "float32")
    assert padded_convolutions(models((2, 2, 3, 1, 1), True), x[:, :2, :2]) == []
    assert padded_convolutions(models((4, 4, 3, 2, 1), True), x) == []
    assert padded_convolutions(models((2, 2, 3, 1, 1), False), x[:, :2, :2])
