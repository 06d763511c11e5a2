"""The parity protocol of DESIGN.md: both twins on the same weights and batches, compared check by check.

`run_model(name)` runs in a process whose Keras backend is already fixed (`KERAS_BACKEND`) and returns
one `Row` per check. `twins parity` runs it once per backend, each in its own subprocess
(`python -m twins_cli.parity --model M --backend B`, see `run_parity`), and tabulates the rows.

A name is a registered model (`resnet50`) or a builder-option variant of one (`VARIANTS`:
`resnet50-deep-dilated` is resnet50 with PSPNet's deep stem and dilated layer3/layer4), so the
options the later models are built on go through the same checks as the registered models.

The checks, each an independent computation on both sides compared against the torch twin:
- `eval_output`: eval-mode outputs (float32).
- `stage_outputs`: every named stage tap (`stem`, `layer1`..`layer4`), Keras `get_layer(name).output`
  against torch `forward_stages(x)[name]`, by name (float32; models with stage taps).
- `train_loss`: the training-mode loss of the model's task: cross-entropy over the output's class axis, or
  MSE against a target map (`saliency_unet`).
- `gradients`: the gradient of every parameter that trains. The key sets must be equal, counted from the
  torch side: a Keras trainable with no torch parameter (or the reverse: a layer frozen on one side only)
  fails the row.
- `sgd_step_params`, `sgd_step_bn_stats`: the *updates* of every parameter and of every BatchNorm
  running statistic over two SGD-momentum steps on two batches (the second step is the first one that
  uses the momentum buffer). `adam_step_params`, `adam_step_bn_stats`: the same under the recipe's Adam
  (torch's `Adam` against `keras_impl.training.TorchAdam`), in their place for a model whose recipe
  trains with Adam (`STEP_CHECKS`; `run_model(optimizer=...)` picks the other pair).
- `round_trip`: torch state -> Keras -> torch state, bit-exact by key; and Keras' own init (BatchNorm
  randomised) -> torch-layout .safetensors -> torch twin, whose eval output must equal the Keras
  twin's (a mapping that is wrong the same way in both directions comes back bit-exact, but computes
  something else), -> Keras again, bit-exact by variable.
- `exclude_restore`: the fine-tuning restore (all but the classifier into a new class count) and the
  full restore, on both sides: exactly the head is skipped and keeps its fresh values, everything else
  is loaded bit-exact (models with a classifier head).

Training-mode checks run in float64 by default. A randomly initialised deep Bottleneck ResNet in
training mode is too ill-conditioned for float32 to resolve its gradients: torch float32 against torch
float64 alone differs by ~0.2 (resnet50) to ~0.7 (resnet152) relative on the worst parameter, so a
float32 comparison of two correct twins measures rounding chaos, not the implementation. Their float64
bounds come from measured errors (`FLOAT64_BOUNDS`, measured figure beside each); `train_dtype="float32"`
runs the same checks against the float32 bounds of DESIGN.md.

Metric: relative max error `max|a - b| / max(max|b|, 1e-6)` with the torch result as `b`; a NaN or an
infinity on either side makes it `inf`. Over a dict of tensors the worst tensor counts and is named; an
empty comparison is an error, never a pass. A failing output or loss comparison names the first layer,
in graph order, whose output diverges. A check that raises becomes a failed row that says what it raised.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from twins import checkpoints, registry
from twins.metrics import abs_err, rel_err  # the parity metric (also the export checks')
from twins_cli.export import output_list

CHECKS = (
    "eval_output",
    "stage_outputs",
    "train_loss",
    "gradients",
    "sgd_step_params",
    "sgd_step_bn_stats",
    "adam_step_params",
    "adam_step_bn_stats",
    "round_trip",
    "exclude_restore",
)
TRAIN_CHECKS = ("train_loss", "gradients", "sgd_step_params", "sgd_step_bn_stats", "adam_step_params",
                "adam_step_bn_stats")
# Export rows: the twin written as a deployment artifact (`twins export`), reloaded in the artifact's runtime
# and compared with the eager twin on a batch of 3 and a batch of 1 (`twins_cli.export.verify`). Keras' exports
# run on the worker's Keras backend (the `export_pt2` row of the torch backend is Keras' format "torch"); the
# torch twin's (`pt2`, `onnx`) run in a worker of their own, backend `torch_impl`, which imports no Keras. A
# format Keras cannot export from a backend here keeps its row, `supported: false`, with the reason
# (`twins.exports.KERAS_LIMITS`).
EXPORT_CHECKS = ("export_pt2", "export_onnx", "export_tf_saved_model", "export_litert", "export_openvino")
TORCH_EXPORT_CHECKS = ("export_pt2", "export_onnx")
ALL_CHECKS = CHECKS + EXPORT_CHECKS
TORCH_TWIN = "torch_impl"  # the `backend` of the torch twin's export rows
# The optimiser-step checks of each optimiser: a model gets the pair of its recipe's optimiser (SGD for
# the classifiers, Adam for the saliency U-Net).
STEP_CHECKS = {"sgd": ("sgd_step_params", "sgd_step_bn_stats"), "adam": ("adam_step_params", "adam_step_bn_stats")}
# Float32 on CPU, the defaults of DESIGN.md "Parity". A looser bound for one model goes in MODEL_BOUNDS
# with the measured value and the reason next to it.
FLOAT32_BOUNDS = {
    "eval_output": 1e-5,
    "stage_outputs": 1e-5,
    "train_loss": 1e-5,  # absolute
    "gradients": 1e-3,
    "sgd_step_params": 1e-4,
    "sgd_step_bn_stats": 1e-4,
    "adam_step_params": 1e-4,
    "adam_step_bn_stats": 1e-4,
    "round_trip": 0.0,  # bit-exact
    "exclude_restore": 0.0,  # bit-exact
    **{check: 1e-5 for check in EXPORT_CHECKS},
}
# The training checks in float64: check -> (bound, worst error measured by `make parity` over every
# model, variant and Keras backend: batch 2, 2-core CPU, keras 3.15.1), the bound 10x or more above it.
# Where the measured figure comes from: float64 rounding through deep, ill-conditioned networks (the worst
# are resnet152 and inception_v3's aux head, whose BatchNorms see 2 values per channel), and on
# tensorflow Keras' SGD applying the momentum 0.9 as a float32 constant (3e-8 on the step-2 updates;
# with momentum 0.5, exact in float32, 5e-13). See `keras_dtype` for the float32 corners the parity
# engine lifts for these runs. vgg11_bn's gradients have a bound of their own (MODEL_BOUNDS).
FLOAT64_BOUNDS = {
    "train_loss": (1e-11, 1.1e-12),  # absolute; resnet152 on jax
    "gradients": (1e-9, 5.3e-11),  # inception_v3 on tensorflow (AuxLogits.fc)
    "sgd_step_params": (1e-6, 5.9e-8),  # inception_v3 on tensorflow (step 2)
    "sgd_step_bn_stats": (2e-8, 1.3e-9),  # resnet152 on torch
    # Adam's steps (saliency_unet at 64x64; resnet18 in the mutation suite's Adam control), measured with
    # `twins parity saliency_unet`: Adam divides by sqrt(v), so a gradient element near eps turns rounding
    # into a relative update error larger than SGD's.
    "adam_step_params": (1e-6, 1.6e-8),  # saliency_unet on jax (step 2, layer4.1.conv2)
    "adam_step_bn_stats": (2e-8, 1.8e-11),  # saliency_unet on jax (conv_5.1.running_var)
}
MODEL_BOUNDS: dict[str, dict[str, float]] = {
    # vgg11_bn: each conv bias feeds a training-mode BatchNorm, which subtracts the batch mean, so its true
    # gradient is exactly zero; both twins' float64 values are rounding noise (<= 9e-16 absolute), which
    # the metric's 1e-6 floor turns into 1.6e-9 (features.0.bias, tensorflow). Every other vgg11_bn
    # tensor agrees to 2.6e-14.
    "vgg11_bn": {"gradients": 1e-8},
}
BACKENDS = ("tensorflow", "jax", "torch")
SGD_LR = 0.1
SGD_MOMENTUM = 0.9
# Adam's steps take the recipe's rate and betas (twins.runs.RECIPES): its update is about `lr` per element
# whatever the gradient's scale, so the recipe's 1e-3 moves every parameter measurably.
NEW_CLASSES = 7  # the class count of the fine-tuning restore in `exclude_restore`


@dataclass(frozen=True)
class Variant:
    """A registered model built with non-default builder options, checked like a model of its own."""

    model: str
    options: dict
    size: int
    why: str


VARIANTS = {
    "resnet18-cifar": Variant("resnet18", {"stem": "cifar"}, 32, "SimCLR's encoder: 3x3/1 stem, no max-pool"),
    "resnet18-features": Variant(
        "resnet18", {"include_top": False, "pooling": "avg"}, 64, "headless, pooled feature vector"
    ),
    "resnet50-deep-dilated": Variant(
        "resnet50", {"stem": "deep", "dilation": (1, 1, 2, 4), "include_top": False}, 33,
        "PSPNet's backbone: deep stem, dilated layer3/layer4, the output-stride-8 map",
    ),
}


def names() -> list[str]:
    """What `twins parity all` runs: every registered model, then every variant."""
    return registry.names() + list(VARIANTS)


def resolve(name: str) -> tuple[str, dict, int]:
    """`(registered model, builder options, default parity size)` of a model name or variant id."""
    if name in VARIANTS:
        v = VARIANTS[name]
        return v.model, dict(v.options), v.size
    try:
        info = registry.get(name)
    except registry.UnknownModelError:
        raise registry.UnknownModelError(
            f"unknown model name {name!r}; expected one of: {', '.join(names())}"
        ) from None
    return name, {}, info.parity_size


@dataclass
class Row:
    model: str
    backend: str
    check: str
    error: float | None
    bound: float
    passed: bool
    detail: str = ""
    meta: dict = field(default_factory=dict)
    # False for an export the framework cannot make on this backend here (the detail says why): neither a
    # pass nor a parity failure.
    supported: bool = True


# ----------------------------------------------------------------------------------------------
# Metrics


def worst(a, b, keys, metric=rel_err) -> tuple[float, str]:
    """Largest per-tensor error of `a` against `b` over `keys`, and which key it was (the first of
    equals). Every key must have a value on both sides; an empty key list is an error (a comparison of
    nothing passes nothing). `a` and `b` are mappings; each value is read once (see `LazyMap`)."""
    keys = list(keys)
    if not keys:
        raise ValueError("nothing to compare: the key list is empty")
    result = None
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            return float("inf"), f"no value for {k}"
        if np.shape(x) != np.shape(y):
            return float("inf"), f"{k}: shape {np.shape(x)} against the torch twin's {np.shape(y)}"
        err = metric(x, y)
        if result is None or err > result[0]:
            result = (err, k)
    return result


class LazyMap:
    """A read-only mapping whose values are computed when read (`value(key)` for keys in `keys`), so a
    comparison over a model's tensors holds one difference at a time instead of a copy of the model."""

    def __init__(self, value, keys):
        self.value, self.keys = value, keys

    def get(self, key, default=None):
        return self.value(key) if key in self.keys else default


def key_set_problem(keras_keys, torch_keys, what: str) -> str | None:
    """None when the two key sets are equal; else a sentence listing what either side lacks."""
    extra = sorted(set(keras_keys) - set(torch_keys))
    lacking = sorted(set(torch_keys) - set(keras_keys))
    if not extra and not lacking:
        return None
    parts = []
    if extra:
        parts.append(f"Keras has {len(extra)} {what} the torch twin lacks: {', '.join(extra[:5])}")
    if lacking:
        parts.append(f"Keras lacks {len(lacking)} torch {what}: {', '.join(lacking[:5])}")
    return "; ".join(parts)


def bound_for(model: str, check: str, train_dtype: str = "float32") -> float:
    if model in MODEL_BOUNDS and check in MODEL_BOUNDS[model]:
        return MODEL_BOUNDS[model][check]
    if train_dtype == "float64" and check in FLOAT64_BOUNDS:
        return FLOAT64_BOUNDS[check][0]
    return FLOAT32_BOUNDS[check]


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 1)) if x.ndim == 4 else x


def outputs_err(got: list, want: list) -> tuple[float, str]:
    """Worst relative error over a model's outputs, and which output it is when there are several."""
    if len(got) != len(want):
        return float("inf"), f"Keras gives {len(got)} outputs, torch {len(want)}"
    errors = [rel_err(g, w) for g, w in zip(got, want)]
    worst_index = int(np.argmax(errors))
    return errors[worst_index], (f"worst: output {worst_index} of {len(errors)}" if len(errors) > 1 else "")


# ----------------------------------------------------------------------------------------------
# Setting up both sides


@contextlib.contextmanager
def keras_dtype(dtype: str):
    """Build and run Keras models under a dtype policy, floatx included (the optimiser's learning
    rate is a floatx variable).

    float64 needs two more switches, both undone on exit so that float32 work later in the same
    process runs as it would in a fresh one: JAX's x64 mode, and Keras' own 32-bit cap on type
    promotion. Keras' `result_type` maps every 64-bit result to 32 bits ("aligned with JAX's default
    behaviour", i.e. x64 off), so ops that promote through it (`ops.mean` in GlobalAveragePooling2D
    and in the loss on jax and torch, `ops.matmul` in Dense on torch) compute a float64 model in
    float32: a ~1e-7 error that a second training step amplifies to 1e-1. The twins stay plain
    Keras; the parity engine lifts the cap for its float64 runs."""
    import keras

    x64_before = None
    cap = {}
    if dtype == "float64":
        from keras.src.backend.common import dtypes as keras_dtypes

        cap = getattr(keras_dtypes, "BIT64_TO_BIT32_DTYPE", {})
        if keras.backend.backend() == "jax":
            import jax

            x64_before = bool(jax.config.jax_enable_x64)
            jax.config.update("jax_enable_x64", True)
    saved_cap = dict(cap)
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    cap.clear()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    try:
        if dtype == "float64" and keras.backend.result_type("float64", "float32") != "float64":
            raise RuntimeError("Keras still promotes float64 to float32 (keras.backend.result_type); this Keras "
                               f"{keras.__version__} needs another way to lift its 32-bit cap for float64 parity")
        yield
    finally:
        cap.update(saved_cap)
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
        if x64_before is not None:
            import jax

            jax.config.update("jax_enable_x64", x64_before)


def disable_tf32(backend: str) -> None:
    """Full float32 for both twins: the torch reference and the Keras backend."""
    from twins_cli.precision import set_tf32

    set_tf32("torch", False)
    if backend != "torch":
        set_tf32(backend, False)


def randomize_batchnorm(model, seed: int) -> None:
    """Fresh BatchNorm is an identity in eval mode (mean 0, var 1, gamma 1, beta 0); move every
    statistic and affine parameter off those values so an eval comparison tests them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def randomize_keras_batchnorm(model, seed: int) -> None:
    """The Keras-side twin of `randomize_batchnorm`, by variable name (not through the bridge, which
    the round trip is testing)."""
    import keras

    rng = np.random.RandomState(seed)
    draws = {
        "gamma": lambda c: 0.5 + rng.rand(c),
        "beta": lambda c: 0.1 * rng.randn(c),
        "moving_mean": lambda c: 0.1 * rng.randn(c),
        "moving_variance": lambda c: 0.5 + rng.rand(c),
    }
    for variable in model.weights:
        if variable.name in draws and len(variable.shape) == 1:
            variable.assign(draws[variable.name](variable.shape[0]).astype(keras.backend.standardize_dtype(variable.dtype)))


def keras_values(model) -> dict[str, np.ndarray]:
    """`{variable.path: numpy}`: the Keras model's own view, independent of the bridge."""
    import keras

    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def labels_for(output_shape: tuple, rng: np.random.RandomState, task: str = "classification") -> np.ndarray:
    """What the training loss compares an NCHW-style output with: for a classifier, class indices shaped like
    the output without its class axis (axis 1); for a saliency map, a target map in [0, 1] of the output's
    shape; for the contrastive loss nothing (the rows' pairing is the target): zeros, one per row."""
    if task == "contrastive":
        return np.zeros(output_shape[0], np.int64)
    if task == "saliency":
        return rng.rand(*output_shape).astype(np.float32)
    classes = output_shape[1]
    labels = rng.randint(0, classes, size=(output_shape[0], *output_shape[2:])).astype(np.int64)
    if task == "segmentation":  # a fifth of the pixels carry the ignore label, which the loss must skip
        labels[rng.rand(*labels.shape) < 0.2] = registry.IGNORE_LABEL
    return labels


def keras_labels(labels: np.ndarray, dtype: str) -> np.ndarray:
    """`labels_for`'s labels for the Keras twin: class indices carry no channel axis and read the same in
    both layouts; a target map moves its channel axis last and takes the training dtype."""
    if labels.dtype.kind == "f":
        return nchw_to_nhwc(labels).astype(dtype)
    return labels


# ----------------------------------------------------------------------------------------------
# First diverging layer


def _torch_intermediates(model, x, training: bool) -> dict[str, np.ndarray]:
    """Output of every named submodule called exactly once in a forward pass."""
    import torch

    outputs: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):  # clone: a later in-place ReLU would overwrite it
                outputs.setdefault(name, []).append(output.detach().clone().numpy())

        handles.append(module.register_forward_hook(hook))
    model.train(training)
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return {name: values[0] for name, values in outputs.items() if len(values) == 1}


def first_divergence(torch_model, keras_model, x: np.ndarray, bound: float, training: bool = False):
    """`(torch module path, relative error)` of the first layer in Keras graph order whose output
    differs from its torch twin's by more than `bound`; None when every comparable layer agrees.
    Works on deep copies: a training-mode pass would move BatchNorm statistics."""
    import keras

    torch_model = copy.deepcopy(torch_model)
    reference = _torch_intermediates(torch_model, x, training)
    taps = [layer for layer in keras_model.layers if layer.name.replace("-", ".") in reference]
    if not taps:
        return None
    probe = keras.Model(keras_model.inputs, [layer.output for layer in taps])
    snapshot = [keras.ops.convert_to_numpy(v) for v in keras_model.non_trainable_variables]
    values = probe(nchw_to_nhwc(x), training=training)
    for variable, value in zip(keras_model.non_trainable_variables, snapshot):
        variable.assign(value)
    for layer, value in zip(taps, values):
        key = layer.name.replace("-", ".")
        got = nhwc_to_nchw(keras.ops.convert_to_numpy(value))
        want = reference[key]
        if got.shape != want.shape:  # e.g. torch's pooled (N, C, 1, 1) against Keras' (N, C)
            if got.size != want.size:
                continue
            got = got.reshape(want.shape)
        err = rel_err(got, want)
        if err > bound:
            return key, err
    return None


# ----------------------------------------------------------------------------------------------
# The checks


def keras_device(backend: str) -> str:
    """Where the Keras twin runs: each backend puts it on a GPU when it sees one."""
    if backend == "jax":
        import jax

        return "cuda" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ParityRun:
    """Both twins of one model on one Keras backend: the shared reference weights and batches, and one
    method per check returning `(error, detail)`. The twin packages are looked up at call time, so a
    test can substitute a deliberately broken piece (see `parity_tests/mutations.py`)."""

    def __init__(self, name: str, *, batch: int, size: int | None, seed: int, train_dtype: str,
                 optimizer: str | None = None):
        import keras
        import torch

        from torch_impl.weights import state_dict_numpy

        from twins.runs import recipe_defaults

        self.name = name
        self.model, self.options, default_size = resolve(name)
        self.info = registry.get(self.model)
        self.size = size or default_size
        self.seed = seed
        self.train_dtype = train_dtype
        self.recipe = recipe_defaults(self.model)
        self.optimizer = optimizer or self.recipe["optimizer"]
        if self.optimizer not in STEP_CHECKS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(STEP_CHECKS)}")
        keras.utils.set_random_seed(seed)
        self.reference = reference_twin(self.model, self.options, seed)
        self.state = state_dict_numpy(self.reference)
        if self.info.task == "contrastive":
            # Rows 2k and 2k+1 are a positive pair: batch 2 is one pair, whose NT-Xent is log(1) = 0 with no
            # gradient; 4 rows (two pairs) is the smallest batch with negatives.
            batch = max(4, batch + batch % 2)
        self.batch = batch
        rng = np.random.RandomState(seed)
        self.batches = [rng.randn(batch, 3, self.size, self.size).astype(np.float32) for _ in range(2)]
        self.x = self.batches[0]
        with torch.no_grad():
            self.expected = [t.numpy() for t in output_list(self.reference(torch.from_numpy(self.x)))]
        self.labels = [labels_for(self.expected[0].shape, rng, self.info.task) for _ in self.batches]

    def bound(self, check: str) -> float:
        return bound_for(self.name, check, self.train_dtype)

    def build_torch(self, **overrides):
        import torch_impl

        return torch_impl.build(self.model, **{**self.options, **overrides})

    def build_keras(self, dtype: str = "float32", **overrides):
        import keras_impl

        with keras_dtype(dtype):
            return keras_impl.build(self.model, **{**self.options, **overrides})

    def keras_twin(self, dtype: str = "float32", **overrides):
        """A Keras twin holding the reference weights, loaded through the bridge."""
        from keras_impl import weights

        model = self.build_keras(dtype, **overrides)
        weights.load_torch_state_dict(model, self.state, strict=True)
        return model

    def torch_twin(self, **overrides):
        """A fresh torch twin holding the reference weights (the reference itself is built with the
        registry's defaults; the training checks need the parity training options, dropout off)."""
        from torch_impl import weights

        model = self.build_torch(**overrides)
        weights.load_state_dict(model, self.state, strict=True)
        return model

    def keras_eval(self, model, x: np.ndarray) -> list[np.ndarray]:
        import keras

        return [nhwc_to_nchw(keras.ops.convert_to_numpy(t)) for t in output_list(model(nchw_to_nhwc(x), training=False))]

    def diagnose(self, training: bool) -> str:
        options = self.info.parity_train_options if training else {}
        hit = first_divergence(self.torch_twin(**options), self.keras_twin(**options), self.x,
                               self.bound("eval_output"), training)
        return f"first diverging layer: {hit[0]} (rel err {hit[1]:.2e})" if hit else "no single layer over the bound"

    # -- eval mode -------------------------------------------------------------------------------

    def eval_output(self):
        err, which = outputs_err(self.keras_eval(self.keras_twin(), self.x), self.expected)
        return err, which if err <= self.bound("eval_output") else "; ".join(filter(None, [which, self.diagnose(False)]))

    def has_stage_taps(self) -> bool:
        return hasattr(self.reference, "forward_stages")

    def stage_outputs(self):
        import keras
        import torch

        kmodel = self.keras_twin()
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in self.reference.forward_stages(torch.from_numpy(self.x)).items()}
        names = list(self.reference.stage_info)
        problem = key_set_problem(expected, names, "stage taps")
        if problem:
            return float("inf"), f"torch forward_stages and stage_info disagree: {problem}"
        taps = keras.Model(kmodel.inputs, [kmodel.get_layer(n).output for n in names])
        outs = taps(nchw_to_nhwc(self.x), training=False)
        got = {n: nhwc_to_nchw(keras.ops.convert_to_numpy(v)) for n, v in zip(names, outs)}
        err, key = worst(got, expected, names)
        return err, f"worst: {key} ({len(names)} taps: {', '.join(names)})"

    # -- training mode: loss, gradients, two SGD steps ---------------------------------------------

    def training(self) -> dict:
        """Both sides' two training steps, run once for the four training checks (a failure too)."""
        if not hasattr(self, "_training"):
            try:
                self._training = self._train_both()
            except Exception as exc:
                self._training = exc
        if isinstance(self._training, Exception):
            raise self._training
        return self._training

    def _train_both(self) -> dict:
        """Both twins take the same two SGD steps side by side; each step's comparisons are made as soon
        as both sides have taken it, key by key from the live tensors, so that at most one earlier
        state per side is held (vgg11_bn has 132 M parameters: a copy is 1 GB in float64)."""
        import keras
        import torch

        from keras_impl import training as ktrain
        from keras_impl import weights as kweights
        from torch_impl import training as ttrain
        from torch_impl.weights import state_dict_numpy

        dtype = self.train_dtype
        from keras_impl.train import set_weight_decay as keras_weight_decay
        from torch_impl.train import set_weight_decay as torch_weight_decay
        from twins import optim

        options, aux_weight, task = self.info.parity_train_options, self.info.aux_weight, self.info.task
        # The recipe's L2 term is part of the training loss (vgg19_slim's 5e-4 on its conv kernels).
        weight_decay = self.recipe["weight_decay"]
        tmodel = self.torch_twin(**options).to(getattr(torch, dtype))
        if self.optimizer == "adam":
            t_opt = ttrain.adam(tmodel.parameters(), self.recipe["lr"], self.recipe["betas"])
        else:
            t_opt = ttrain.sgd(tmodel.parameters(), SGD_LR, SGD_MOMENTUM)
        parameters = dict(tmodel.named_parameters())
        decayed = [parameters[k] for k in torch_weight_decay(tmodel, weight_decay)]
        t_task_loss = ttrain.loss_for(task, aux_weight)

        def t_loss(outputs, labels):
            loss = t_task_loss(outputs, labels)
            return loss + optim.l2_penalty(decayed, weight_decay) if decayed else loss

        t_keys = [k for k, p in tmodel.named_parameters() if p.requires_grad]
        stat_keys = [k for k in tmodel.state_dict() if k.endswith(("running_mean", "running_var"))]
        out = {"t_param_keys": t_keys, "t_losses": [], "k_losses": [], "params": [], "stats": []}

        with keras_dtype(dtype):
            kmodel = self.keras_twin(dtype, **options)
            keras_weight_decay(kmodel, weight_decay)
            view = ktrain.training_view(kmodel, self.info.aux_heads)
            step = ktrain.value_and_grad_fn(view, ktrain.loss_for(task, aux_weight))
            if self.optimizer == "adam":
                k_opt = ktrain.adam(self.recipe["lr"], self.recipe["betas"])
            else:
                k_opt = ktrain.sgd(SGD_LR, SGD_MOMENTUM)
            k_slots = {slot.key: slot for slot in kweights.slots(kmodel)}

            def keras_delta(key):
                slot = k_slots.get(key)
                if slot is None or key not in k_before:
                    return None
                return slot.to_torch(keras.ops.convert_to_numpy(slot.variable)) - k_before[key]

            for s, (x, y) in enumerate(zip(self.batches, self.labels), 1):
                t_before, k_before = state_dict_numpy(tmodel), kweights.torch_state_dict(kmodel)
                t_y = torch.from_numpy(y)
                loss, grads = ttrain.value_and_grad(tmodel, t_loss, torch.from_numpy(x).to(getattr(torch, dtype)),
                                                    t_y.to(getattr(torch, dtype)) if t_y.is_floating_point() else t_y)
                out["t_losses"].append(float(loss.detach()))
                k_loss, k_grads = step(nchw_to_nhwc(x).astype(dtype), keras_labels(y, dtype))
                k_loss = keras.ops.convert_to_numpy(k_loss)
                if k_loss.dtype.itemsize < np.dtype(dtype).itemsize:  # e.g. JAX without x64
                    raise RuntimeError(f"Keras computed the loss in {k_loss.dtype}, asked for {dtype}")
                out["k_losses"].append(float(k_loss))
                if s == 1:
                    by_path = {v.path: g for v, g in zip(view.trainable_variables, k_grads)}
                    k_keys = {key for key, slot in k_slots.items() if slot.variable.path in by_path}

                    def keras_grad(key):
                        grad = by_path[k_slots[key].variable.path]
                        return None if grad is None else k_slots[key].to_torch(keras.ops.convert_to_numpy(grad))

                    problem = key_set_problem(k_keys, t_keys, "trainable tensors")
                    if problem:
                        out["gradients"] = (float("inf"), problem)
                    else:
                        torch_grads = {k: None if g is None else g.detach().cpu().numpy() for k, g in grads.items()}
                        err, key = worst(LazyMap(keras_grad, k_keys), torch_grads, t_keys)
                        out["gradients"] = (err, f"worst: {key}")
                    del by_path
                t_opt.step()
                k_opt.apply_gradients(zip(k_grads, view.trainable_variables))
                del grads, k_grads
                t_now = tmodel.state_dict()
                t_delta = LazyMap(lambda k: t_now[k].detach().cpu().numpy() - t_before[k], t_before)
                k_delta = LazyMap(keras_delta, k_before)
                out["params"].append(worst(k_delta, t_delta, t_keys))
                if stat_keys:
                    out["stats"].append(worst(k_delta, t_delta, stat_keys))
                del t_before, k_before, t_delta, k_delta  # the next step's copies replace them
        return out

    def train_loss(self, run: dict):
        err = abs(run["k_losses"][0] - run["t_losses"][0])
        return err, "" if err <= self.bound("train_loss") else self.diagnose(True)

    def gradients(self, run: dict):
        return run["gradients"]

    def _updates(self, steps: list, check: str):
        """Worst relative error of the per-step updates `state[s] - state[s-1]` over both steps; the
        detail gives each step's own worst tensor (a NaN from step 1 spreads to every tensor in step 2)."""
        if check not in STEP_CHECKS[self.optimizer]:
            raise ValueError(f"{check} compares {check.split('_')[0]} steps; this run took {self.optimizer} steps")
        bound = self.bound(check)
        detail = "; ".join(f"step {s} {'within' if err <= bound else 'over'} the bound: {err:.1e} ({key})"
                           for s, (err, key) in enumerate(steps, 1))
        return max(err for err, _ in steps), detail

    def sgd_step_params(self, run: dict):
        return self._updates(run["params"], "sgd_step_params")

    def sgd_step_bn_stats(self, run: dict):
        return self._updates(run["stats"], "sgd_step_bn_stats")

    def adam_step_params(self, run: dict):
        return self._updates(run["params"], "adam_step_params")

    def adam_step_bn_stats(self, run: dict):
        return self._updates(run["stats"], "adam_step_bn_stats")

    # -- the bridge ------------------------------------------------------------------------------

    def round_trip(self):
        import torch

        from keras_impl import weights as kweights
        from torch_impl import weights as tweights
        from torch_impl.weights import state_dict_numpy

        # torch -> Keras -> torch, by key against the torch twin's own state.
        expected = {k: v for k, v in self.state.items() if not checkpoints.is_counter(k)}
        back = kweights.torch_state_dict(self.keras_twin())
        problem = key_set_problem(back, expected, "tensors")
        if problem:
            return float("inf"), f"torch -> Keras -> torch: {problem}"
        err_a, key_a = worst(back, expected, expected, abs_err)

        # Keras -> torch (through a file) -> Keras, with the torch twin's output checked in between.
        source = self.build_keras()
        randomize_keras_batchnorm(source, self.seed + 1)
        with tempfile.TemporaryDirectory() as tmp:
            path = checkpoints.write(Path(tmp) / "keras.safetensors", kweights.torch_state_dict(source))
            tmodel = self.build_torch().eval()
            tweights.load_state_dict(tmodel, checkpoints.read(path), strict=True)
        with torch.no_grad():
            t_out = [t.numpy() for t in output_list(tmodel(torch.from_numpy(self.x)))]
        out_err, _ = outputs_err(self.keras_eval(source, self.x), t_out)
        if out_err > self.bound("eval_output"):
            return out_err, (f"the torch twin loaded from the Keras twin's export computes something else: "
                             f"eval output differs by {out_err:.2e} (bound {self.bound('eval_output'):.0e}); "
                             f"the bridge maps a tensor to the wrong place")
        target = self.build_keras()
        kweights.load_torch_state_dict(target, state_dict_numpy(tmodel), strict=True)
        a, b = keras_values(target), keras_values(source)
        problem = key_set_problem(a, b, "variables")
        if problem:
            return float("inf"), f"Keras -> torch -> Keras: {problem}"
        err_b, key_b = worst(a, b, b, abs_err)
        return max(err_a, err_b), (f"torch -> Keras -> torch {err_a:.1e} at {key_a}; Keras -> torch -> Keras "
                                   f"{err_b:.1e} at {key_b}; the torch twin on Keras' export: eval {out_err:.1e}")

    def head_keys(self) -> list[str]:
        heads = self.info.classifier
        return [k for k in self.state if not checkpoints.is_counter(k)
                and any(k == p or k.startswith(p + ".") for p in heads)]

    def exclude_restore(self):
        from keras_impl import weights as kweights
        from torch_impl import weights as tweights
        from torch_impl.weights import state_dict_numpy

        head = self.head_keys()
        body = [k for k in self.state if not checkpoints.is_counter(k) and k not in head]
        layer_prefixes = tuple(p.replace(".", "-") + end for p in self.info.classifier for end in ("/", "-"))
        problems, errors = [], []

        def restore(side, model, load, export, values, exclude, classes):
            before = values(model)
            report = load(model, self.state, exclude=exclude, strict=True)
            now = export(model)
            skipped = head if exclude else []
            loaded = body if exclude else body + head
            if sorted(report.skipped) != sorted(skipped):
                problems.append(f"{side} skipped {sorted(report.skipped)}, expected {sorted(skipped)}")
            if sorted(report.loaded) != sorted(loaded):
                problems.append(f"{side} reported {len(report.loaded)} keys loaded, expected {len(loaded)}")
            missing = [k for k in loaded if k not in now]
            if missing:
                problems.append(f"{side} model has no {missing[0]}")
                return
            errors.append((*worst(now, self.state, loaded, abs_err), side, "full" if not exclude else "fine-tune"))
            if exclude:
                after = values(model)
                if side == "torch":
                    fresh = [k for k in head if not np.array_equal(after[k], before[k])]
                else:
                    fresh = [p for p in before if p.startswith(layer_prefixes) and not np.array_equal(after[p], before[p])]
                if fresh:
                    problems.append(f"{side} overwrote the excluded head: {', '.join(fresh)}")
                wrong = [k for k in head if now[k].shape[0] != classes]
                if wrong:
                    problems.append(f"{side} head {', '.join(wrong)} does not have {classes} classes")

        for exclude, classes in ((self.info.classifier, NEW_CLASSES), ((), self.info.num_classes)):
            restore("Keras", self.build_keras(num_classes=classes), kweights.load_torch_state_dict,
                    kweights.torch_state_dict, keras_values, exclude, classes)
            restore("torch", self.build_torch(num_classes=classes), tweights.load_state_dict,
                    state_dict_numpy, state_dict_numpy, exclude, classes)
        if problems:
            return float("inf"), "; ".join(problems)
        err, key, side, kind = max(errors, key=lambda e: e[0])
        return err, (f"skipped {', '.join(head)} into {NEW_CLASSES} classes; {len(body)} loaded; "
                     f"worst: {key} ({side}, {kind} restore)")

    def has_head(self) -> bool:
        return bool(self.head_keys())

    # -- exports ---------------------------------------------------------------------------------

    def exported(self, fmt: str):
        """The Keras twin (reference weights, built for this size) as a `fmt` artifact against itself eager."""
        import keras

        from twins_cli.train import Side

        model = self.keras_twin(input_shape=(self.size, self.size, 3))
        return export_row(Side("keras", keras.backend.backend()), model, self.model, fmt, self.size, self.seed)

    def has_running_stats(self) -> bool:
        return any(k.endswith(("running_mean", "running_var")) for k in self.state)


def run_model(
    name: str,
    *,
    batch: int = 2,
    size: int | None = None,
    seed: int = 0,
    checks=CHECKS,
    train_dtype: str = "float64",
    optimizer: str | None = None,
) -> list[Row]:
    """Run the parity checks for one model (or variant) on the current Keras backend. A check that
    does not apply (stage taps on a model without them, the head restore on a headless variant) has
    no row (nor the running-statistics step on a model without BatchNorm); a check that raises has a
    failed row saying what it raised."""
    import keras
    import torch

    backend = keras.backend.backend()
    disable_tf32(backend)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; expected a subset of {', '.join(ALL_CHECKS)}")
    run = ParityRun(name, batch=batch, size=size, seed=seed, train_dtype=train_dtype, optimizer=optimizer)
    meta = {"batch": run.batch, "size": run.size, "dtype": "float32", "train_dtype": train_dtype, "optimizer": run.optimizer,
            "device": keras_device(backend), "keras": keras.__version__, "torch": torch.__version__,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in run.options.items()}}
    rows: list[Row] = []

    def add(check, compute):
        rows.append(check_row(name, backend, check, run.bound(check), compute, meta))

    wanted = [c for c in ALL_CHECKS if c in checks]
    if not run.has_stage_taps():
        wanted = [c for c in wanted if c != "stage_outputs"]
    if not run.has_head():
        wanted = [c for c in wanted if c != "exclude_restore"]
    if not run.has_running_stats():
        wanted = [c for c in wanted if not c.endswith("_step_bn_stats")]
    other_steps = [c for name, pair in STEP_CHECKS.items() if name != run.optimizer for c in pair]
    wanted = [c for c in wanted if c not in other_steps]
    for check in wanted:
        if check in TRAIN_CHECKS:
            add(check, lambda check=check: getattr(run, check)(run.training()))
        elif check in EXPORT_CHECKS:
            add(check, lambda check=check: run.exported(export_format(check, "keras")))
        else:
            add(check, getattr(run, check))
        if check == STEP_CHECKS[run.optimizer][1] or check not in TRAIN_CHECKS:
            release_memory()  # each check builds its own twins; the big ones (vgg11_bn) are 0.5 GB a copy
    return rows


# ----------------------------------------------------------------------------------------------
# Export rows


def export_format(check: str, framework: str) -> str:
    """The `twins export --format` of an export check: `export_pt2` is the torch twin's `pt2`, Keras' `torch`."""
    fmt = check[len("export_"):]
    return "torch" if framework == "keras" and fmt == "pt2" else fmt


def export_row(side, model, name: str, fmt: str, size: int, seed: int) -> tuple[float, str]:
    """Export `model` (of registered model `name`), reopen it in its runtime, compare: `(error, detail)` as every
    check returns; a failure the export limits record (`twins.exports`) is raised as `Unsupported`."""
    from twins import exports
    from twins_cli import export

    with tempfile.TemporaryDirectory(prefix="twins-export-") as tmp:
        path = Path(tmp) / f"artifact{exports.FORMATS[side.framework][fmt]}"
        try:
            written = export.export_twin(side, model, fmt, path, size)
            result = export.verify(side, model, fmt, path, size, seed=seed)
        except Exception as exc:
            limited = export.known_limit(side, fmt, exc, name)
            if limited is None:
                raise
            raise limited from exc
    return result["error"], f"{export.describe(result)}; {written['bytes'] / 1e6:.1f} MB, exported in {written['export_s']:.1f} s"


def check_row(name: str, backend: str, check: str, bound: float, compute, meta: dict) -> Row:
    """The row of one check: `compute()` returns `(error, detail)`; an export the limits record is a row that is
    not supported, any other exception a failed row saying what was raised (never a crashed parity run)."""
    from twins_cli.export import Unsupported

    try:
        error, detail = compute()
    except Unsupported as exc:
        return Row(name, backend, check, None, bound, False, f"not supported: {exc}", meta, supported=False)
    except Exception as exc:
        return Row(name, backend, check, None, bound, False, f"raised {type(exc).__name__}: {exc}", meta)
    return Row(name, backend, check, float(error), bound, bool(np.isfinite(error) and error <= bound), detail, meta)


def reference_twin(model: str, options: dict, seed: int):
    """The torch twin every check compares against: seeded init, BatchNorm statistics randomised, eval mode."""
    import torch

    import torch_impl

    torch.manual_seed(seed)
    reference = torch_impl.build(model, **options).eval()
    randomize_batchnorm(reference, seed)
    return reference


def run_torch_exports(name: str, *, size: int | None = None, seed: int = 0, checks=TORCH_EXPORT_CHECKS) -> list[Row]:
    """The torch twin's export rows (backend `torch_impl`): the reference weights of `ParityRun`, no Keras."""
    import torch

    from twins_cli.train import Side

    model, options, default_size = resolve(name)
    size = size or default_size
    reference = reference_twin(model, options, seed)
    meta = {"batch": "3 and 1", "size": size, "dtype": "float32", "device": "cpu", "torch": torch.__version__,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    return [check_row(name, TORCH_TWIN, check, bound_for(name, check),
                      lambda check=check: export_row(Side("torch"), reference, model, export_format(check, "torch"),
                                                     size, seed), meta)
            for check in TORCH_EXPORT_CHECKS if check in checks]


# ----------------------------------------------------------------------------------------------
# One subprocess per Keras backend


def installed_backends() -> list[str]:
    import importlib.util

    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def failed_row(model, backend, reason) -> dict:
    return {"model": model, "backend": backend, "check": "run", "error": None, "bound": 0.0,
            "passed": False, "detail": reason, "meta": {}}


# The quick parity run, what `make test` and `make demo` (`twins report --quick`) compute per model: every
# check that applies (None), or these checks, at this size (None: the model's parity size). The
# rest runs in `make parity` (README "Parity"): resnet34 and the two resnet18 variants share every
# layer type with resnet18 (the variants' own wiring is what their eval and stage rows check), and
# resnet101/152 with resnet50; resnet50's training checks run on resnet50-deep-dilated's Bottleneck
# blocks (the same code, with the deep stem and dilation on top); alexnet's round trip and head restore are the bridge's generic code;
# the float64 training checks of alexnet, vgg11_bn and inception_v3 peak at 8.4, 18 and 6.7 GB in one
# worker (tensorflow, jax) and take minutes, vgg19_slim's bridge checks alone 10 GB (143 M parameters
# at 224x224, its only size); densenet121's cost 40 s a backend, and its and inception_v3's round trip
# is the bridge's generic code (inception_v3 keeps its two-head restore) (squeezenet1_0 runs the
# full set for the zoo). All for DESIGN.md's test budget (8 GB, 25 min; measured 24 min before these
# cuts).
QUICK_SUITE: dict[str, tuple | None] = {
    "squeezenet1_0": None, "saliency_unet": None,
    # resnet50-deep-dilated's training checks: saliency_unet's rows train the same Bottleneck blocks (its
    # layer3 and layer4, downsample blocks included, on every backend); the deep stem and the dilation are
    # wiring of the forward pass, which the eval and stage rows compare (PSPNet's rows will train them).
    "resnet50-deep-dilated": (("eval_output", "stage_outputs", "round_trip"), None),
    # resnet18's training checks: test_mutations.py's control run computes every row of resnet18 at 64x64
    # on each backend (and asserts they pass) before showing each check fail on a broken twin.
    "resnet18": (("eval_output", "stage_outputs", "round_trip", "exclude_restore"), None),
    "resnet50": (("eval_output", "stage_outputs", "round_trip", "exclude_restore"), None),
    "resnet18-cifar": (("eval_output", "stage_outputs", "round_trip"), None),
    "resnet18-features": (("eval_output", "stage_outputs", "exclude_restore"), None),
    "resnet34": (("eval_output", "stage_outputs"), None),
    "densenet121": (("eval_output",), None),
    "resnet101": (("eval_output", "stage_outputs"), None),
    "resnet152": (("eval_output", "stage_outputs"), None),
    "alexnet": (("eval_output",), None),
    "vgg11_bn": (("eval_output",), None),
    "vgg19_slim": (("eval_output",), None),
    "inception_v3": (("eval_output", "exclude_restore"), 75),
    # SimCLR: simclr_ssl's every row (two outputs, the NT-Xent training loss); simclr_sl is the same CIFAR encoder
    # with a linear head, whose cross-entropy training rows are resnet18's code (the mutation control run).
    "simclr_ssl": None,
    "simclr_sl": (("eval_output", "round_trip", "exclude_restore"), None),
    # PSPNet: every row at 33x33 (a 5x5 map the 2, 3 and 6 bins do not divide), main + 0.4 aux loss with a fifth
    # of the labels 255; the deep stem and the dilated stages train here (resnet50-deep-dilated's rows do not).
    "pspnet": None,
}


# The export rows of the quick run: every format of resnet18 (each exporter and runtime on the commonest ops).
# `parity_tests/test_export.py` adds the torch twin's of simclr_ssl and pspnet; `make parity` runs every model's.
QUICK_EXPORTS: dict[str, tuple] = {"resnet18": EXPORT_CHECKS}


def run_parity(models, backends, *, batch=2, size=None, checks=None, quick=False, timeout=1800,
               log=sys.stderr) -> list[dict]:
    """Run the parity worker for `models` once per backend; a backend that cannot run yields rows
    with `passed: False` and the reason, rather than vanishing. `quick`: each model's QUICK_SUITE plan (and
    QUICK_EXPORTS). `backends` may hold `torch_impl`, the torch twin's export rows."""
    rows = []
    available = installed_backends() + [TORCH_TWIN]
    for backend in backends:
        if backend not in available:
            rows += [failed_row(m, backend, f"{backend} is not installed") for m in models]
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "twins_cli.parity", "--backend", backend, "--batch", str(batch),
                   "--json-out", str(out)]
            for m in models:
                cmd += ["--model", m]
            if size:
                cmd += ["--size", str(size)]
            if checks:
                cmd += ["--checks", ",".join(checks)]
            if quick:
                cmd += ["--quick"]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            if backend == TORCH_TWIN:
                env.pop("KERAS_BACKEND")
            print(f"[parity] {backend}: {', '.join(models)} ...", file=log, flush=True)
            start = time.time()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
                reason = None if proc.returncode == 0 else (
                    f"worker exited {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
            except subprocess.TimeoutExpired:
                reason = f"worker timed out after {timeout} s"
            if reason is None:
                rows += json.loads(out.read_text())
                print(f"[parity] {backend}: done in {time.time() - start:.0f} s", file=log, flush=True)
            else:
                print(f"[parity] {backend}: FAILED: {reason}", file=log, flush=True)
                rows += [failed_row(m, backend, reason) for m in models]
    return rows


def release_memory() -> None:
    """Drop what a model's checks left in the process: Keras' global state, and the heap pages glibc
    keeps mapped after they are freed. JAX's compiled functions stay: clearing them makes every later
    model recompile each op, and the peak (XLA compiling one model's float64 training step: 10 GB for
    resnet152 on jax) does not move."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twins_cli.parity")
    parser.add_argument("--model", required=True, action="append")
    parser.add_argument("--backend", required=True, choices=BACKENDS + (TORCH_TWIN,))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--checks", default=",".join(ALL_CHECKS))
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--quick", action="store_true", help="each model's QUICK_SUITE plan")
    args = parser.parse_args(argv)
    if args.backend != TORCH_TWIN and os.environ.get("KERAS_BACKEND") != args.backend:
        print(f"KERAS_BACKEND must be {args.backend!r} before keras is imported", file=sys.stderr)
        return 2
    checks = tuple(c for c in args.checks.split(",") if c)
    rows = []
    for model in args.model:
        plan_checks, plan_size = (QUICK_SUITE.get(model) or (None, None)) if args.quick else (None, None)
        model_checks = tuple(c for c in checks if c not in EXPORT_CHECKS and (plan_checks is None or c in plan_checks))
        model_checks += tuple(c for c in checks if c in EXPORT_CHECKS and (not args.quick or c in QUICK_EXPORTS.get(model, ())))
        if not model_checks:
            continue
        if args.backend == TORCH_TWIN:
            rows += [asdict(r) for r in run_torch_exports(model, size=args.size or plan_size, checks=model_checks)]
            continue
        rows += [asdict(r) for r in run_model(model, batch=args.batch, size=args.size or plan_size,
                                               checks=model_checks)]
        release_memory()
    checkpoints.write_atomic(args.json_out, lambda tmp: tmp.write_text(json.dumps(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
