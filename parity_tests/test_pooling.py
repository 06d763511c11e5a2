"""Adaptive average pooling, the Keras twins' `AdaptiveAveragePool` against torch's AdaptiveAvgPool2d,
inside a compiled function (`predict_on_batch`: a tf.function on tensorflow, jit on jax), on sizes the
bins do not divide, on the 1-pixel axes small inputs leave, and on the sizes where Keras 3.15's own
layer returns NaN on jax (7x7 -> 7x7 is vgg11_bn at 224 px) (DESIGN.md "Known parity hazards")."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity_tests.conftest import BACKEND


@pytest.mark.keras
@pytest.mark.parametrize("in_size, out_size", [((1, 1), (7, 7)), ((1, 3), (6, 6)), ((2, 1), (6, 6)),
                                               ((7, 7), (7, 7)), ((6, 6), (7, 7)), ((14, 14), (7, 7)),
                                               ((6, 6), (6, 6)), ((9, 9), (6, 6)), ((9, 9), (2, 2)),
                                               ((5, 7), (3, 3)), ((5, 5), (6, 6)), ((5, 5), (3, 3)),
                                               ((60, 60), (6, 6))],
                         ids=lambda v: "x".join(map(str, v)))
def test_adaptive_average_pool_matches_torch_when_compiled(in_size, out_size):
    import keras

    from keras_impl.common import AdaptiveAveragePool

    x = np.random.RandomState(0).rand(2, 4, *in_size).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), out_size).numpy()
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, AdaptiveAveragePool(out_size)(inputs))
    got = np.asarray(model.predict_on_batch(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=BACKEND)


# PSPNet's upsampling: the PPM's bins (1, 2, 3, 6) back onto a 5x5 / 9x9 map, and the logits' zoom by 8.
RESIZES = [((1, 1), (5, 5)), ((2, 2), (5, 5)), ((3, 3), (9, 9)), ((6, 6), (5, 5)), ((5, 7), (33, 49)),
           ((9, 9), (65, 65))]


@pytest.mark.keras
@pytest.mark.parametrize("in_size, out_size", RESIZES, ids=lambda v: "x".join(map(str, v)))
def test_align_corners_resize_matches_torch_when_compiled(in_size, out_size):
    """`AlignCornersResize([x, like])` against `F.interpolate(bilinear, align_corners=True)`, compiled, with
    the map's size unknown when traced (the interpolation matrices are built from the runtime shape)."""
    import keras

    from keras_impl.common import AlignCornersResize

    x = np.random.RandomState(0).randn(2, 4, *in_size).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), out_size, mode="bilinear",
                                               align_corners=True).numpy()
    inputs, like = keras.Input((None, None, 4)), keras.Input((None, None, 1))
    model = keras.Model([inputs, like], AlignCornersResize()([inputs, like]))
    got = np.asarray(model.predict_on_batch([x.transpose(0, 2, 3, 1), np.zeros((2, *out_size, 1), np.float32)]))
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-6, err_msg=BACKEND)


@pytest.mark.keras
def test_align_corners_resize_zoom_and_keras_own_resize_is_not_it():
    """The zoom form gives `(size - 1) * zoom + 1`, torch's PSPNet output size; Keras' own bilinear resize
    (half-pixel centres, torch's align_corners=False) is visibly different on the same map, which is why the
    twin does not use it: the comparison above would fail on it."""
    import keras

    from keras_impl.common import AlignCornersResize

    x = np.random.RandomState(1).randn(1, 3, 5, 5).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), (33, 33), mode="bilinear",
                                               align_corners=True).numpy().transpose(0, 2, 3, 1)
    nhwc = x.transpose(0, 2, 3, 1)
    got = keras.ops.convert_to_numpy(AlignCornersResize(zoom=8)(nhwc))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    half_pixel = keras.ops.convert_to_numpy(keras.ops.image.resize(nhwc, (33, 33), interpolation="bilinear"))
    assert np.abs(half_pixel - expected).max() > 0.1 * np.abs(expected).max()
