"""The parity checks of DESIGN.md for every model and builder-option variant, on the current Keras
backend.

Each model's rows are computed once by the parity worker in a subprocess (`twins_cli.parity.run_parity`,
what `twins parity` runs): the torch twin and the Keras twin, given the same weights through the bridge
and the same batches, each compute their own result, and the tests assert on the measured errors against
the bounds in `twins_cli.parity`. One process per model keeps the suite's memory at one model's peak
instead of the sum of every compiled graph. resnet101 and resnet152 share every line of code with
resnet50, so they get the eval-mode checks here and their full matrix from `make parity`
(DESIGN.md, test-time budget)."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest

from parity_tests.conftest import BACKEND, model_params
from twins_cli.parity import CHECKS, QUICK_SUITE, VARIANTS

pytestmark = pytest.mark.keras

# What `make test` runs per model: twins_cli.parity.QUICK_SUITE, also what `make demo` runs.
SUITE = QUICK_SUITE
# Checks that do not apply: stage taps exist on the ResNets; the head restore needs a head; the
# running-statistics step needs BatchNorm.
WITH_STAGE_TAPS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "saliency_unet", *VARIANTS]
HEADLESS = ["resnet18-features", "resnet50-deep-dilated"]
WITHOUT_BATCHNORM = ["alexnet", "squeezenet1_0"]
# The optimiser-step rows follow the recipe: Adam for the saliency U-Net (seed 000), SGD for the others.
ADAM = ["saliency_unet"]


def covered(check: str) -> list[str]:
    """The models whose `check` row `make test` computes."""
    applies = {"stage_outputs": lambda n: n in WITH_STAGE_TAPS, "exclude_restore": lambda n: n not in HEADLESS,
               "sgd_step_params": lambda n: n not in ADAM,
               "sgd_step_bn_stats": lambda n: n not in WITHOUT_BATCHNORM and n not in ADAM,
               "adam_step_params": lambda n: n in ADAM,
               "adam_step_bn_stats": lambda n: n in ADAM and n not in WITHOUT_BATCHNORM}.get(check, lambda n: True)
    return [n for n, plan in SUITE.items() if applies(n) and (plan is None or check in plan[0])]


# Models whose quick plans share one worker process (each still gets its own plan, `--quick`): a worker
# start costs 5-8 s (imports, and on jax the first compilations), 6 fewer a backend keep `make test` in
# DESIGN.md's budget. Only eval-mode and bridge checks are grouped; a model with float64 training checks
# has a worker of its own, so one model's peak is the worker's, and so has vgg19_slim (its Keras graph
# leaves ~1.4 GB in a tensorflow process: grouped with vgg11_bn the suite peaked at 8.4 GB).
WORKER_GROUPS = (("resnet18", "resnet34", "resnet101", "resnet152"),
                 ("resnet50", "resnet18-cifar", "resnet18-features", "resnet50-deep-dilated", "simclr_sl"),
                 ("alexnet", "vgg11_bn"), ("densenet121", "inception_v3"))


def worker_group(name: str) -> tuple[str, ...]:
    return next((group for group in WORKER_GROUPS if name in group), (name,))


@functools.lru_cache(maxsize=None)
def group_results(group: tuple[str, ...]) -> dict:
    from twins_cli.parity import run_parity

    rows = run_parity(list(group), [BACKEND], checks=CHECKS, quick=True, log=io.StringIO())  # exports: test_export.py
    crashed = [r for r in rows if r["check"] == "run"]
    assert not crashed, crashed[0]["detail"]
    return {(row["model"], row["check"]): row for row in rows}


def results(name: str) -> dict:
    return {check: row for (model, check), row in group_results(worker_group(name)).items() if model == name}


def assert_row(name, check):
    row = results(name)[check]
    assert row["backend"] == BACKEND
    assert row["passed"], f"{name} {check} on {BACKEND}: error {row['error']} > bound {row['bound']}; {row['detail']}"


@model_params(covered("eval_output"))
def test_eval_outputs_match(model_name):
    assert_row(model_name, "eval_output")


@model_params(covered("stage_outputs"))
def test_every_stage_tap_matches_by_name(model_name):
    assert_row(model_name, "stage_outputs")
    assert "5 taps: stem, layer1, layer2, layer3, layer4" in results(model_name)["stage_outputs"]["detail"]


@model_params(covered("train_loss"))
def test_train_losses_match(model_name):
    assert_row(model_name, "train_loss")


@model_params(covered("gradients"))
def test_gradients_match(model_name):
    assert_row(model_name, "gradients")


@model_params(covered("sgd_step_params"))
def test_two_sgd_momentum_steps_match(model_name):
    assert_row(model_name, "sgd_step_params")
    if model_name in covered("sgd_step_bn_stats"):
        assert_row(model_name, "sgd_step_bn_stats")
    else:
        assert "sgd_step_bn_stats" not in results(model_name)  # no BatchNorm, no row


@model_params(covered("adam_step_params"))
def test_two_adam_steps_match(model_name):
    """The saliency recipe's optimiser, torch's Adam (lr 1e-3, betas 0.9/0.99), against `TorchAdam`."""
    assert_row(model_name, "adam_step_params")
    assert_row(model_name, "adam_step_bn_stats")
    assert "sgd_step_params" not in results(model_name)  # one optimiser's rows per model: the recipe's


@model_params(covered("round_trip"))
def test_bridge_round_trip_is_bit_exact(model_name):
    assert_row(model_name, "round_trip")
    assert results(model_name)["round_trip"]["error"] == 0.0


@model_params(covered("exclude_restore"))
def test_exclude_final_layer_restore(model_name):
    from twins import registry

    assert_row(model_name, "exclude_restore")
    heads = registry.get(model_name.split("-")[0]).classifier
    detail = results(model_name)["exclude_restore"]["detail"]
    # A classifier's head is one layer; the saliency U-Net's, the output block conv_0 (conv and its BatchNorm).
    keys = ("conv_0.0.weight, conv_0.1.weight, conv_0.1.bias, conv_0.1.running_mean, conv_0.1.running_var"
            if model_name == "saliency_unet" else ", ".join(f"{h}.weight, {h}.bias" for h in heads))
    assert detail.startswith(f"skipped {keys} into 7 classes")


@model_params(HEADLESS)
def test_headless_variants_have_no_head_to_restore(model_name):
    assert "exclude_restore" not in results(model_name)


def test_a_broken_weight_is_named_as_the_first_diverging_layer():
    """Break one BatchNorm of the Keras twin: the diagnosis must name exactly that layer."""
    import keras
    import torch

    import keras_impl
    import torch_impl
    from keras_impl.weights import load_torch_state_dict
    from twins_cli.parity import first_divergence, randomize_batchnorm

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
    """The float32 variant of the training checks, against DESIGN.md's float32 bounds, on the
    well-conditioned resnet18 (the deep Bottleneck ResNets need float64, see twins_cli/parity.py)."""
    from twins_cli.parity import FLOAT32_BOUNDS, run_model

    rows = {r.check: r for r in run_model("resnet18", checks=("train_loss", "gradients"), train_dtype="float32")}
    for check in ("train_loss", "gradients"):
        assert rows[check].bound == FLOAT32_BOUNDS[check]
        assert rows[check].passed, rows[check]


def test_float64_switches_are_undone_after_a_run():
    """A float64 run lifts Keras' 32-bit type-promotion cap (and switches JAX to x64); float32 work
    after it in the same process must run as in a fresh process."""
    import keras

    from twins_cli.parity import run_model

    def settings():
        x64 = None
        if BACKEND == "jax":
            import jax

            x64 = bool(jax.config.jax_enable_x64)
        return keras.backend.result_type("float64", "float32"), keras.config.floatx(), x64

    before = settings()
    rows = run_model("resnet18", size=32, checks=("train_loss",))
    assert rows[0].passed and rows[0].meta["train_dtype"] == "float64"
    assert settings() == before


def test_worker_groups_hold_eval_and_bridge_checks_only():
    """A grouped worker keeps every model's compiled graphs until it exits: no float64 training there."""
    from twins_cli.parity import TRAIN_CHECKS

    training = set(TRAIN_CHECKS)
    for group in WORKER_GROUPS:
        for name in group:
            assert SUITE[name] is not None and not training & set(SUITE[name][0]), name


def test_the_suite_names_every_registered_model_and_variant():
    """A model registered later is not silently left out of `make test`'s parity rows."""
    from twins import registry

    assert set(SUITE) == set(registry.names()) | set(VARIANTS)


def test_the_quick_run_computes_each_models_plan():
    """`twins report --quick` (make demo) runs QUICK_SUITE through the worker, as the groups above do: resnet34
    gets its eval and stage rows only, saliency_unet every row that applies to it."""
    assert sorted(results("resnet34")) == ["eval_output", "stage_outputs"]
    assert sorted(results("saliency_unet")) == sorted(["eval_output", "stage_outputs", "train_loss", "gradients",
                                                       "adam_step_params", "adam_step_bn_stats", "round_trip",
                                                       "exclude_restore"])
