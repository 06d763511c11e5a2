"""The recipe arithmetic both trainers share (`twins.optim`) and its two framework halves: the decaying
rate (TF1's `polynomial_decay`), torch's momentum form in Keras (`MomentumSGD`), and the L2 term on the
same conv kernels in both frameworks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twins import optim


def test_polynomial_decay_is_tf1s():
    tf = pytest.importorskip("tensorflow")
    total = 37
    ours = optim.learning_rates(1e-3, 1e-7, total)
    for step in (0, 1, 10, 36, 37, 50):
        tf_rate = float(tf.compat.v1.train.polynomial_decay(1e-3, tf.constant(step, tf.int64), total, 1e-7)())
        mine = optim.polynomial_decay(step, start=1e-3, end=1e-7, total=total)
        assert mine == pytest.approx(tf_rate, rel=1e-6, abs=1e-12), step
        if step < total:
            assert ours[step] == np.float32(mine)
    assert ours[0] == np.float32(1e-3) and ours.dtype == np.float32
    assert np.all(np.diff(ours) < 0)
    assert np.all(optim.learning_rates(0.01, None, 5) == np.float32(0.01))
    with pytest.raises(ValueError, match="at least one step"):
        optim.learning_rates(0.01, None, 0)


def test_l2_keys_are_the_conv_kernels():
    import torch_impl

    model = torch_impl.build("resnet18", num_classes=3)
    keys = optim.l2_keys({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert "conv1.weight" in keys and "layer4.1.conv2.weight" in keys and "layer2.0.downsample.0.weight" in keys
    assert not [k for k in keys if k.startswith("fc") or ".bn" in k or k.endswith(".bias") or "downsample.1" in k]
    assert len(keys) == 20


def _torch_sgd_trajectory(rates, grads, momentum):
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float32))
    opt = torch.optim.SGD([p], lr=float(rates[0]), momentum=momentum)
    for rate, g in zip(rates, grads):
        for group in opt.param_groups:
            group["lr"] = float(rate)
        p.grad = torch.from_numpy(g)
        opt.step()
    return p.detach().numpy()


@pytest.mark.keras
def test_momentum_sgd_takes_torchs_steps_under_a_decaying_rate():
    """Keras' own SGD folds the rate into its velocity: the same steps as torch's at a constant rate,
    other ones once the rate decays. `MomentumSGD` with a `RateTable` takes torch's."""
    import keras

    from keras_impl.training import MomentumSGD, RateTable

    rates = optim.learning_rates(0.1, 1e-3, 6)
    grads = [np.random.RandomState(i).randn(3).astype(np.float32) for i in range(6)]
    expected = _torch_sgd_trajectory(rates, grads, 0.9)

    def keras_trajectory(optimizer):
        v = keras.Variable(np.ones(3, np.float32))
        for g in grads:
            optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
        return keras.ops.convert_to_numpy(v)

    ours = keras_trajectory(MomentumSGD(RateTable(rates), momentum=0.9))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    theirs = keras_trajectory(keras.optimizers.SGD(RateTable(rates), momentum=0.9))
    assert np.abs(theirs - expected).max() > 1e-3  # the form matters once the rate moves
    constant = np.full(6, 0.1, np.float32)
    np.testing.assert_allclose(keras_trajectory(keras.optimizers.SGD(0.1, momentum=0.9)),
                               _torch_sgd_trajectory(constant, grads, 0.9), rtol=1e-5, atol=1e-6)


@pytest.mark.keras
def test_the_l2_term_decays_the_same_tensors_by_the_same_amount():
    """torch's `weight_decay * sum(w**2) / 2` over its conv kernels against the regularizers `fit` adds
    on the Keras twin, on the same weights through the bridge; Keras' `L2(weight_decay)` without the
    half would be twice it."""
    import keras

    import keras_impl
    import torch_impl
    from keras_impl import train as ktrain
    from keras_impl.weights import load_torch_state_dict
    from torch_impl import train as ttrain

    torch.manual_seed(0)
    tmodel = torch_impl.build("resnet18", num_classes=3)
    kmodel = keras_impl.build("resnet18", num_classes=3)
    load_torch_state_dict(kmodel, tmodel.state_dict())
    t_keys, k_keys = ttrain.set_weight_decay(tmodel, 5e-4), ktrain.set_weight_decay(kmodel, 5e-4)
    assert t_keys == k_keys and len(t_keys) == 20
    params = dict(tmodel.named_parameters())
    t_l2 = float(optim.l2_penalty([params[k].detach() for k in t_keys], 5e-4))
    k_l2 = float(sum(keras.ops.convert_to_numpy(loss) for loss in kmodel.losses))
    assert k_l2 == pytest.approx(t_l2, rel=1e-5)
    assert t_l2 > 0.1  # large enough to matter beside a cross-entropy
    whole = float(sum(keras.ops.convert_to_numpy(keras.ops.sum(v.value ** 2)) * 5e-4
                      for v in kmodel.trainable_variables if v.regularizer is not None))
    assert whole == pytest.approx(2 * t_l2, rel=1e-5)  # L2(weight_decay) would be this
    # Frozen kernels are not decayed on either side (feature extraction), and 0 switches it off.
    ttrain.set_feature_extract(tmodel, ("fc",), True)
    ktrain.set_feature_extract(kmodel, ("fc",), True)
    assert ttrain.set_weight_decay(tmodel, 5e-4) == ktrain.set_weight_decay(kmodel, 5e-4) == []
    for layer in kmodel.layers:  # unfrozen again: 5e-4 decays its kernels, then 0 switches that off
        layer.trainable = True
    assert len(ktrain.set_weight_decay(kmodel, 5e-4)) == 20 and kmodel.losses
    assert ktrain.set_weight_decay(kmodel, 0.0) == [] and kmodel.losses == []


@pytest.mark.keras
def test_the_l2_term_is_exact_in_float64():
    """The float64 parity checks resolve the L2 term to rounding: `SlimL2` multiplies by a Python float
    in the variable's dtype. Keras' own `L2` casts its factor through a float32 tensor on tensorflow,
    which the same comparison catches (5e-8 relative)."""
    import keras

    import keras_impl
    from keras_impl.train import set_weight_decay
    from keras_impl.weights import slots
    from parity_tests.conftest import BACKEND
    from twins_cli.parity import keras_dtype

    with keras_dtype("float64"):
        model = keras_impl.build("resnet18", num_classes=2)
        set_weight_decay(model, 5e-4)
        decayed = [s.variable for s in slots(model) if s.variable.regularizer is not None]
        expected = sum(0.5 * 5e-4 * np.sum(keras.ops.convert_to_numpy(v).astype(np.float64) ** 2) for v in decayed)
        got = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
        assert abs(got - expected) <= 1e-14 * expected
        keras_l2 = float(sum(keras.ops.convert_to_numpy(keras.regularizers.L2(2.5e-4)(v)) for v in decayed))
        if BACKEND == "tensorflow":
            assert abs(keras_l2 - expected) > 1e-9 * expected


@pytest.mark.keras
def test_torch_adam_in_keras_takes_torchs_steps():
    """The saliency recipe's optimiser: `TorchAdam` takes `torch.optim.Adam`'s steps to 1e-15 relative in float64,
    on gradients from 1 down to 1e-8 (some elements exactly 0) and under the shared rate table; Keras' own
    Adam, with the same rate, betas and eps, adds eps to the uncorrected sqrt(v) and is shown off torch's."""
    import keras

    from keras_impl.training import RateTable, TorchAdam
    from twins_cli.parity import keras_dtype

    rates = optim.learning_rates(1e-3, 1e-4, 5)
    rng = np.random.RandomState(0)
    start = rng.randn(4, 6)
    grads = [rng.randn(4, 6) * scale for scale in (1e-8, 1.0, 1e-3, 1e-6, 1.0)]
    grads[0][0, :3] = 0.0
    p = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = torch.optim.Adam([p], lr=float(rates[0]), betas=(0.9, 0.99))
    with keras_dtype("float64"):
        ours, theirs = keras.Variable(start.copy()), keras.Variable(start.copy())
        ours_opt = TorchAdam(RateTable(rates), beta_1=0.9, beta_2=0.99)
        keras_opt = keras.optimizers.Adam(RateTable(rates), beta_1=0.9, beta_2=0.99, epsilon=1e-8)
        worst_ours = worst_keras = 0.0
        for rate, g in zip(rates, grads):
            for group in opt.param_groups:
                group["lr"] = float(rate)
            p.grad = torch.from_numpy(g)
            opt.step()
            ours_opt.apply_gradients([(keras.ops.convert_to_tensor(g), ours)])
            keras_opt.apply_gradients([(keras.ops.convert_to_tensor(g), theirs)])
            expected = p.detach().numpy()
            worst_ours = max(worst_ours, np.abs(keras.ops.convert_to_numpy(ours) - expected).max())
            worst_keras = max(worst_keras, np.abs(keras.ops.convert_to_numpy(theirs) - expected).max())
    assert worst_ours < 1e-15
    assert worst_keras > 1e-5  # the first step, on gradients of ~1e-8: Keras' eps counts 10x more there
    with pytest.raises(ValueError, match=r"beta_2 must be in \[0, 1\), got 1.0"):
        TorchAdam(beta_2=1.0)


@pytest.mark.keras
def test_leaky_relu_takes_its_slope_in_the_inputs_dtype():
    """`keras_impl.common.LeakyReLU` equals torch's in float64 on every backend; Keras' own layer, on
    tensorflow, multiplies by a float32 slope (0.2 as 0.2000000030) and is shown off it there."""
    import keras

    from keras_impl.common import LeakyReLU
    from parity_tests.conftest import BACKEND
    from twins_cli.parity import keras_dtype

    x = np.random.RandomState(0).randn(64)
    expected = torch.nn.functional.leaky_relu(torch.from_numpy(x), 0.2).numpy()
    with keras_dtype("float64"):
        ours = keras.ops.convert_to_numpy(LeakyReLU(0.2)(x))
        theirs = keras.ops.convert_to_numpy(keras.layers.LeakyReLU(negative_slope=0.2)(x))
    assert np.array_equal(ours, expected)
    if BACKEND == "tensorflow":
        assert np.abs(theirs - expected).max() > 1e-9
    with pytest.raises(TypeError):
        LeakyReLU()  # no default slope: Keras' is 0.3, torch's 0.01
