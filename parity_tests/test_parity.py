"""The six parity comparisons of DESIGN.md for every model, on the current Keras backend.

Each model's checks are computed once (module fixture) by `twins.parity.run_model`: the torch twin and
the Keras twin, given the same weights through the bridge and the same batch, each compute their own
result; the tests assert on the measured errors against the bounds in `twins.parity.BOUNDS`."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from parity_tests.conftest import BACKEND, MODELS, model_params

pytestmark = pytest.mark.keras


@functools.lru_cache(maxsize=None)
def results(model_name: str) -> dict:
    from twins.parity import run_model

    return {row.check: row for row in run_model(model_name)}


def assert_row(model_name, check):
    row = results(model_name)[check]
    assert row.backend == BACKEND
    assert row.passed, f"{model_name} {check} on {BACKEND}: error {row.error} > bound {row.bound}; {row.detail}"


@model_params()
def test_eval_outputs_match(model_name):
    assert_row(model_name, "eval_output")


@model_params()
def test_train_losses_match(model_name):
    assert_row(model_name, "train_loss")


@model_params()
def test_gradients_match(model_name):
    assert_row(model_name, "gradients")


@model_params()
def test_one_sgd_step_matches(model_name):
    assert_row(model_name, "sgd_step_params")
    assert_row(model_name, "sgd_step_bn_stats")


@model_params()
def test_bridge_round_trip_is_bit_exact(model_name):
    assert_row(model_name, "round_trip")
    assert results(model_name)["round_trip"].error == 0.0


@model_params()
def test_exclude_final_layer_restore(model_name):
    assert_row(model_name, "exclude_restore")
    assert "fc.weight" in results(model_name)["exclude_restore"].detail


def test_a_broken_weight_is_named_as_the_first_diverging_layer():
    """Break one BatchNorm of the Keras twin: the diagnosis must name exactly that layer."""
    import keras
    import torch

    import keras_impl
    import torch_impl
    from keras_impl.weights import load_torch_state_dict
    from twins.parity import first_divergence, randomize_batchnorm

    torch.manual_seed(0)
    reference = torch_impl.build("resnet18").eval()
    randomize_batchnorm(reference, 0)
    kmodel = keras_impl.build("resnet18")
    load_torch_state_dict(kmodel, reference.state_dict())
    x = np.random.RandomState(0).randn(1, 3, 64, 64).astype(np.float32)
    assert first_divergence(reference, kmodel, x, 1e-5) is None
    gamma = kmodel.get_layer("layer2-1-bn1").gamma
    gamma.assign(keras.ops.convert_to_numpy(gamma) * 1.01)
    name, err = first_divergence(reference, kmodel, x, 1e-5)
    assert name == "layer2.1.bn1"
    assert err > 1e-3


def test_float32_training_checks_also_run():
    """The float32 variant of the training checks runs on the well-conditioned resnet18 (the deep
    Bottleneck ResNets need float64, see twins/parity.py)."""
    from twins.parity import run_model

    rows = {r.check: r for r in run_model("resnet18", checks=("train_loss", "gradients"), train_dtype="float32")}
    assert rows["train_loss"].passed, rows["train_loss"]
    assert rows["gradients"].passed, rows["gradients"]
