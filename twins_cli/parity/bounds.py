"""The checks, their bounds and the backends: what a parity row is measured against.

Float32 bounds are DESIGN.md's; the training checks run in float64 by default, against bounds set from the
errors `make parity` measured (each figure beside its bound). A looser bound for one model goes in
MODEL_BOUNDS with the measured value and the reason next to it.
"""
from __future__ import annotations

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
# The eval checks' verdicts are graded against the truth: the torch twin run in float64 on the same batch. Torch's
# own float32 result is already some distance from it (a model whose outputs are small beside its activations:
# torchvision's vgg11_bn with a 2-class head at 224 px, torch float32 8-10e-6 from its float64 run), so a Keras
# twin fails only where it is further from the truth than the check's bound or TORCH_FLOAT32_MULTIPLE times torch
# float32's own distance, whichever is larger; the row's error is the Keras twin's distance and its bound that
# larger of the two, and the row says torch float32's distance beside it.
GRADED_CHECKS = ("eval_output", "stage_outputs")
TORCH_FLOAT32_MULTIPLE = 2.0
# The gradients check divides a tensor's error by the largest of its torch values, or of this fraction of the
# largest gradient value of the whole model (or of rel_err's 1e-6), whichever is largest. A tensor whose true
# gradient is zero (a bias or a BatchNorm shift that a training-mode BatchNorm's mean subtraction follows) holds
# only float64 rounding on both sides, ~1e-15 of the model's gradients, which rel_err's fixed 1e-6 floor turned
# into 2-9e-9 (examples/mobilenet_v2, features.1.conv.2.bias: 9.1e-15 absolute, the model's largest gradient 5.4);
# a tensor whose true gradient is any fraction of the model's above this one is still graded relative to itself.
GRADIENT_SCALE_FLOOR = 1e-5
BACKENDS = ("tensorflow", "jax", "torch")
SGD_LR = 0.1
SGD_MOMENTUM = 0.9
# Adam's steps take the recipe's rate and betas (twins.runs.RECIPES): its update is about `lr` per element
# whatever the gradient's scale, so the recipe's 1e-3 moves every parameter measurably.
NEW_CLASSES = 7  # the class count of the fine-tuning restore in `exclude_restore`


def bound_for(model: str, check: str, train_dtype: str = "float32") -> float:
    if model in MODEL_BOUNDS and check in MODEL_BOUNDS[model]:
        return MODEL_BOUNDS[model][check]
    if train_dtype == "float64" and check in FLOAT64_BOUNDS:
        return FLOAT64_BOUNDS[check][0]
    return FLOAT32_BOUNDS[check]
