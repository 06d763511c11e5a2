"""The parity protocol of DESIGN.md: both twins on the same weights and batches, compared check by check.

`run_model(name)` runs in a process whose Keras backend is already fixed (`KERAS_BACKEND`) and returns
one `Row` per check. `twins parity` runs every model of its plan in one worker process per backend
(`python -m twins_cli.parity --backend B --model M ...`, see `run_parity`), and tabulates the rows.

The parts, one file each:
- `bounds`: the checks and their bounds; `variants`: the names (registered models and builder-option variants);
- `plan`: the quick plan of `make test` and `make demo` (`QUICK_SUITE`) and the jobs a worker runs;
- `sides`: the torch reference, the batches' labels, the float64 switches; `compare`: the metric over tensors
  and the first diverging layer; `checks`: the checks themselves (`ParityRun`, `run_model`); `exports`: the
  export rows; `rows`: a row and how a check becomes one; `table`: the Markdown table of rows;
- `worker`: one backend's process; `launch`: starting it per backend and collecting its rows; `memory`:
  releasing what a model left; `gate`: `assert_twins`, the one call a CI test makes.

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

from .bounds import (ALL_CHECKS, BACKENDS, CHECKS, EXPORT_CHECKS, FLOAT32_BOUNDS, FLOAT64_BOUNDS, MODEL_BOUNDS,
                     NEW_CLASSES, SGD_LR, SGD_MOMENTUM, STEP_CHECKS, TORCH_EXPORT_CHECKS, TORCH_TWIN, TRAIN_CHECKS,
                     bound_for)
from .checks import ParityRun, run_model
from .compare import (LazyMap, first_divergence, key_set_problem, nchw_to_nhwc, nhwc_to_nchw, outputs_err,
                      worst)
from .exports import export_format, export_row, run_torch_exports
from .gate import assert_twins
from .launch import default_backends, installed_backends, run_parity, run_worker
from .memory import release_memory
from .plan import QUICK_EXPORTS, QUICK_SUITE, Job, jobs
from .rows import Row, check_row, failed_row
from .sides import (disable_tf32, keras_device, keras_dtype, keras_labels, keras_values, labels_for,
                    randomize_batchnorm, randomize_keras_batchnorm, reference_twin)
from .variants import VARIANTS, Variant, names, resolve
from twins.metrics import abs_err, rel_err  # the parity metric (also the export checks')
