"""Deliberately broken Keras twins and bridges: one per way a twin goes wrong, each paired with the
parity rows it must turn red and the tensor or layer those rows must name.

`run_mutated` applies each one (pytest's monkeypatch, undone after the run: the parity engine looks the
twin packages up at call time) and runs the parity engine on resnet18; the session's worker does that
(`parity_tests/session_worker.py`), and `test_mutations.py` asserts on the rows. A check that no mutation turns red is not a
check: every check in `twins_cli.parity.CHECKS` is the target of at least one mutation here, and a
test asserts that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MODEL = "resnet18"
SIZE = 64


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    # check -> a regular expression the failing row's detail must match (the tensor or layer it names)
    red: dict[str, str]
    apply: Callable
    # The optimiser of the parity engine's steps ("adam": the saliency recipe's, for the adam_step rows).
    optimizer: str = "sgd"
    # The model and image height it breaks (the width: the parity engine's, `ModelInfo.parity_width`).
    model: str = MODEL
    size: int = SIZE
    # Also run its rows on square images (their rows' meta: `square_control`), for a break that only another
    # width than the height shows.
    square_control: bool = False


def _tamper_gradient(monkeypatch, path: str, tamper) -> None:
    """Wrap `keras_impl.training.value_and_grad_fn` so the gradient of the variable `path` goes
    through `tamper(numpy array) -> numpy array` before anyone sees it."""
    import keras

    from keras_impl import training

    original = training.value_and_grad_fn

    def broken(model, loss_fn, training_mode=True):
        step = original(model, loss_fn, training_mode)
        index = [v.path for v in model.trainable_variables].index(path)

        def tampered(x, y):
            loss, grads = step(x, y)
            grads = list(grads)
            value = tamper(keras.ops.convert_to_numpy(grads[index]).copy())
            grads[index] = keras.ops.convert_to_tensor(value, dtype=grads[index].dtype)
            return loss, grads

        return tampered

    monkeypatch.setattr(training, "value_and_grad_fn", broken)


def nan_gradient(monkeypatch):
    def one_nan(g):
        g.flat[g.size // 2] = np.nan
        return g

    _tamper_gradient(monkeypatch, "layer3-0-conv2/kernel", one_nan)


def scaled_gradient(monkeypatch):
    _tamper_gradient(monkeypatch, "layer2-1-bn2/gamma", lambda g: g * 1.001)


def extra_trainable(monkeypatch):
    """A BatchNorm whose running mean is trainable: the bridge still maps it (to `running_mean`), so
    strict loading passes, but Keras now trains a tensor torch keeps as a buffer."""
    import keras_impl

    original = keras_impl.build

    def build(name, **kwargs):
        model = original(name, **kwargs)
        model.get_layer("layer2-0-bn1").moving_mean.trainable = True
        return model

    monkeypatch.setattr(keras_impl, "build", build)


def swapped_bn_mapping(monkeypatch):
    """gamma <-> running_var and moving_variance <-> weight, the same way in both directions: the
    bridge's own round trip comes back bit-exact, the model computes something else."""
    from keras_impl import weights

    monkeypatch.setitem(weights._BN_NAMES, "gamma", "running_var")
    monkeypatch.setitem(weights._BN_NAMES, "moving_variance", "weight")


def _sgd_with(monkeypatch, **forced):
    from keras_impl import training

    original = training.sgd

    def sgd(learning_rate, momentum=0.0):
        return original(**{"learning_rate": learning_rate, "momentum": momentum, **forced})

    monkeypatch.setattr(training, "sgd", sgd)


def sgd_momentum(monkeypatch):
    _sgd_with(monkeypatch, momentum=0.01)


def sgd_learning_rate(monkeypatch):
    _sgd_with(monkeypatch, learning_rate=0.09)


def keras_adam(monkeypatch):
    """Keras' own Adam with the recipe's rate, betas and torch's eps: it adds eps to the uncorrected
    sqrt(v), an eps 10x larger than torch's at the first step (b2 = 0.99)."""
    import keras

    from keras_impl import training

    def adam(learning_rate, betas=(0.9, 0.999), eps=1e-8):
        return keras.optimizers.Adam(learning_rate, beta_1=betas[0], beta_2=betas[1], epsilon=eps)

    monkeypatch.setattr(training, "adam", adam)


def bn_momentum(monkeypatch):
    from keras_impl.common import BatchNorm

    original = BatchNorm.__init__

    def init(self, epsilon=1e-5, momentum=0.1, **kwargs):
        original(self, epsilon=epsilon, momentum=0.01, **kwargs)

    monkeypatch.setattr(BatchNorm, "__init__", init)


def biased_running_variance(monkeypatch):
    from keras_impl.common import BatchNorm

    monkeypatch.setattr(BatchNorm, "running_variance", staticmethod(lambda variance, count: variance))


def unloaded_head(monkeypatch):
    """A loader that reports the classifier as loaded but leaves the model's own values in it."""
    from keras_impl import weights

    original = weights.load_torch_state_dict

    def load(model, state_dict, *, exclude=(), strict=True):
        own = weights.torch_state_dict(model)
        state = {k: own[k] if k.startswith("fc.") and k in own and own[k].shape == np.shape(v) else v
                 for k, v in state_dict.items()}
        return original(model, state, exclude=exclude, strict=strict)

    monkeypatch.setattr(weights, "load_torch_state_dict", load)


def stem_tap_after_pool(monkeypatch):
    """The `stem` skip tap placed after the max-pool instead of before it (the U-Net would then
    concatenate a quarter-resolution map where it expects half resolution)."""
    from keras import layers

    from keras_impl import resnet

    def stem_layers(x, stem, prefix=""):
        x = resnet.conv_bn(x, 64, 7, 2, 3, conv_name=f"{prefix}conv1", bn_name=f"{prefix}bn1")
        x = layers.ReLU(name=f"{prefix}relu")(x)
        x = resnet.max_pool(x, 3, 2, 1, name=f"{prefix}maxpool")
        return layers.Identity(name=f"{prefix}stem")(x)

    monkeypatch.setattr(resnet, "stem_layers", stem_layers)


def swapped_upsample_size(monkeypatch):
    """PSPNet's corner-to-corner upsampling by its zoom (`AlignCornersResize`) takes the output's height from the
    map's width and its width from the map's height: the same on a square image."""
    from keras_impl import common

    original = common.AlignCornersResize.call

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return original(self, inputs)
        in_h, in_w = common.spatial_size(inputs)
        out_h, out_w = (in_w - 1) * self.zoom + 1, (in_h - 1) * self.zoom + 1
        rows = common.align_corners_matrix(in_h, out_h, inputs.dtype)
        cols = common.align_corners_matrix(in_w, out_w, inputs.dtype)
        return common.apply_separable(inputs, rows, cols, (in_h, in_w), (out_h, out_w))

    monkeypatch.setattr(common.AlignCornersResize, "call", call)


MUTATIONS = [
    Mutation("nan_gradient", "one NaN in the gradient of layer3.0.conv2 (not the first tensor)",
             {"gradients": r"worst: layer3\.0\.conv2\.weight$",
              "sgd_step_params": r"step 1 over the bound: inf \(layer3\.0\.conv2\.weight\)"}, nan_gradient),
    Mutation("scaled_gradient", "the gradient of layer2.1.bn2's gamma scaled by 1.001",
             {"gradients": r"worst: layer2\.1\.bn2\.weight$",
              "sgd_step_params": r"step 1 over the bound: \S+ \(layer2\.1\.bn2\.weight\)"}, scaled_gradient),
    Mutation("extra_trainable", "an extra Keras trainable: layer2.0.bn1's running mean",
             {"gradients": r"Keras has 1 trainable tensors the torch twin lacks: layer2\.0\.bn1\.running_mean$"},
             extra_trainable),
    Mutation("swapped_bn_mapping", "the bridge maps gamma <-> running_var, consistently both ways",
             {"eval_output": r"^first diverging layer: bn1 \(", "train_loss": r"^first diverging layer: bn1 \(",
              "round_trip": "computes something else"}, swapped_bn_mapping),
    Mutation("sgd_momentum", "Keras SGD momentum 0.01 instead of 0.9",
             {"sgd_step_params": "step 1 within the bound: .*; step 2 over the bound"}, sgd_momentum),
    Mutation("sgd_learning_rate", "Keras SGD learning rate 0.09 instead of 0.1",
             {"sgd_step_params": "step 1 over the bound"}, sgd_learning_rate),
    Mutation("bn_momentum", "BatchNorm momentum 0.01 instead of torch's 0.1",
             {"sgd_step_bn_stats": r"step 1 over the bound: \S+ \(\S+\.running_(mean|var)\)"}, bn_momentum),
    Mutation("biased_running_variance", "running variance updated with the biased batch variance",
             {"sgd_step_bn_stats": r"step 1 over the bound: \S+ \(\S+\.running_var\)"}, biased_running_variance),
    Mutation("unloaded_head", "the loader leaves the classifier unloaded but reports it loaded",
             {"eval_output": r"^first diverging layer: fc \(",
              # both halves: the Keras twin loaded from the torch twin, and the one loaded from a Keras export
              "round_trip": r"torch -> Keras -> torch \S+ at fc\.\S+; Keras -> torch -> Keras (?!0\.0e\+00)\S+ at fc/",
              "exclude_restore": r"worst: fc\.\w+ \(Keras, full restore\)"}, unloaded_head),
    Mutation("stem_tap_after_pool", "the `stem` tap placed after the max-pool",
             {"stage_outputs": r"^worst: stem: shape \(2, 64, 16, 14\) against the torch twin's \(2, 64, 32, 28\)"},
             stem_tap_after_pool),
    Mutation("keras_adam", "Keras' own Adam instead of torch's form (eps added to the uncorrected sqrt(v))",
             {"adam_step_params": r"step 1 over the bound"}, keras_adam, optimizer="adam"),
    Mutation("bn_momentum_adam", "BatchNorm momentum 0.01 instead of torch's 0.1, under Adam's steps",
             {"adam_step_bn_stats": r"step 1 over the bound: \S+ \(\S+\.running_(mean|var)\)"}, bn_momentum,
             optimizer="adam"),
    Mutation("swapped_upsample_size", "PSPNet's final upsampling swaps the output's height and width (pspnet, 33x25)",
             {"eval_output": r"output 0: shape \(2, \d+, 25, 33\) against the torch twin's \(2, \d+, 33, 25\)"},
             swapped_upsample_size, model="pspnet", size=33, square_control=True),
]


def by_name(name: str) -> Mutation:
    return next(m for m in MUTATIONS if m.name == name)


def run_mutated(mutation: Mutation) -> list[dict]:
    """The parity engine's rows of `mutation.red`'s checks on its model (resnet18) at its size with the mutation
    applied (in the session worker, or in the pytest process when it takes the task), the twins restored
    afterwards; with `square_control`, then the same on square images, their rows marked `square_control`."""
    from dataclasses import asdict

    import pytest

    from twins_cli.parity import release_memory, run_model
    from twins_cli.parity.store import RECORDINGS_ENV

    with pytest.MonkeyPatch.context() as monkeypatch:
        # the torch twin's steps recorded here, not read from the session's shared recordings: a mutation that broke
        # the torch side must not be compared with the clean twin's recording, nor leave its own to the next run
        monkeypatch.delenv(RECORDINGS_ENV, raising=False)
        mutation.apply(monkeypatch)
        rows = [asdict(row) for row in run_model(mutation.model, size=mutation.size, checks=tuple(mutation.red),
                                                 optimizer=mutation.optimizer)]
        if mutation.square_control:
            for row in run_model(mutation.model, size=mutation.size, width=mutation.size, checks=tuple(mutation.red),
                                 optimizer=mutation.optimizer):
                rows.append({**asdict(row), "meta": {**row.meta, "square_control": True}})
    release_memory(between_models=True)
    return rows
