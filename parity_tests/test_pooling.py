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
                                               ((5, 7), (3, 3))],
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
