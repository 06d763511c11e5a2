"""The parity protocol of DESIGN.md: both twins on the same weights and batch, compared check by check.

`run_model(name)` runs in a process whose Keras backend is already fixed (`KERAS_BACKEND`) and returns
one `Row` per check. `twins parity` runs it once per backend, each in its own subprocess
(`python -m twins.parity --model M --backend B`), and tabulates the rows.

Training-mode checks (loss, gradients, one SGD step) run in float64 by default. A randomly initialised
deep Bottleneck ResNet in training mode is too ill-conditioned for float32 to resolve its gradients:
torch float32 against torch float64 alone differs by ~0.2 (resnet50) to ~0.7 (resnet152) relative on
the worst parameter, so a float32 comparison of two correct twins measures rounding chaos, not the
implementation. In float64 the twins agree to ~1e-7 or better (float64 rounding times the same
conditioning; Keras' global average pooling reduces with ~7e-8 accuracy on the jax and
torch backends), well inside the DESIGN.md bounds;
`train_dtype="float32"` runs the same checks in float32. Eval outputs are always compared in float32.

Metric: relative max error `max|a - b| / max(max|b|, 1e-6)` with the torch result as `b`; for a dict
of tensors (gradients, parameters) the worst tensor counts and is named. A failing output or loss
comparison names the first layer, in graph order, whose output diverges.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from twins import registry
from twins.precision import set_tf32

CHECKS = (
    "eval_output",
    "train_loss",
    "gradients",
    "sgd_step_params",
    "sgd_step_bn_stats",
    "round_trip",
    "exclude_restore",
)
# Float32 on CPU; see DESIGN.md "Parity". A looser bound for one model goes in MODEL_BOUNDS with the
# measured value and the reason next to it.
BOUNDS = {
    "eval_output": 1e-5,
    "train_loss": 1e-5,  # absolute
    "gradients": 1e-3,
    "sgd_step_params": 1e-4,
    "sgd_step_bn_stats": 1e-4,
    "round_trip": 0.0,  # bit-exact
    "exclude_restore": 0.0,  # bit-exact
}
MODEL_BOUNDS: dict[str, dict[str, float]] = {}
BACKENDS = ("tensorflow", "jax", "torch")
SGD_LR = 0.1
SGD_MOMENTUM = 0.9


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


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6)) if b.size else 0.0


def worst(a: dict, b: dict, keys=None) -> tuple[float, str]:
    """Largest per-tensor relative error over `keys` (default: all of `b`), and which key it was."""
    keys = list(b) if keys is None else list(keys)
    missing = [k for k in keys if k not in a or a[k] is None]
    if missing:
        return float("inf"), f"no value for {missing[0]} ({len(missing)} keys)"
    errors = [(rel_err(a[k], b[k]), k) for k in keys]
    return max(errors) if errors else (0.0, "")


def bound_for(model: str, check: str) -> float:
    return MODEL_BOUNDS.get(model, {}).get(check, BOUNDS[check])


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


@contextlib.contextmanager
def keras_dtype(dtype: str):
    """Build Keras models under a dtype policy; float64 on JAX needs x64 switched on first."""
    import keras

    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def disable_tf32(backend: str) -> None:
    """Full float32 for both twins: the torch reference and the Keras backend."""
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
        got = keras.ops.convert_to_numpy(value)
        got = np.moveaxis(got, -1, 1) if got.ndim == 4 else got
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


def run_model(
    name: str,
    *,
    batch: int = 2,
    size: int | None = None,
    seed: int = 0,
    checks=CHECKS,
    train_dtype: str = "float64",
) -> list[Row]:
    """Run the parity checks for one model on the current Keras backend."""
    import keras
    import torch

    import keras_impl
    import torch_impl
    from keras_impl import training as ktrain
    from keras_impl.weights import load_torch_state_dict, to_torch_layout, torch_state_dict
    from torch_impl import training as ttrain
    from torch_impl.weights import load_state_dict, state_dict_numpy

    info = registry.get(name)
    backend = keras.backend.backend()
    disable_tf32(backend)
    size = size or info.parity_size
    meta = {"batch": batch, "size": size, "dtype": "float32", "train_dtype": train_dtype, "device": keras_device(backend),
            "keras": keras.__version__, "torch": torch.__version__}
    rng = np.random.RandomState(seed)
    x = rng.randn(batch, 3, size, size).astype(np.float32)
    y = rng.randint(0, info.num_classes, size=batch).astype(np.int64)
    x_nhwc = nchw_to_nhwc(x)
    rows: list[Row] = []

    def add(check, error, detail=""):
        bound = bound_for(name, check)
        passed = error is not None and np.isfinite(error) and error <= bound
        rows.append(Row(name, backend, check, error, bound, bool(passed), detail, meta))

    torch.manual_seed(seed)
    keras.utils.set_random_seed(seed)
    reference = torch_impl.build(name)
    randomize_batchnorm(reference, seed)
    state = state_dict_numpy(reference)

    def keras_twin(dtype="float32", **kwargs):
        with keras_dtype(dtype):
            model = keras_impl.build(name, **kwargs)
        load_torch_state_dict(model, state, strict=True)
        return model

    kmodel = keras_twin()

    def diagnose(training: bool) -> str:
        hit = first_divergence(reference, keras_twin(), x, bound_for(name, "eval_output"), training)
        return f"first diverging layer: {hit[0]} (rel err {hit[1]:.2e})" if hit else "no single layer over the bound"

    if "eval_output" in checks:
        reference.eval()
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = keras.ops.convert_to_numpy(kmodel(x_nhwc, training=False))
        err = rel_err(got, expected)
        add("eval_output", err, "" if err <= bound_for(name, "eval_output") else diagnose(False))

    train_checks = {"train_loss", "gradients", "sgd_step_params", "sgd_step_bn_stats"} & set(checks)
    if train_checks:
        tdtype = getattr(torch, train_dtype)
        xt, yt = torch.from_numpy(x).to(tdtype), torch.from_numpy(y)
        tmodel = copy.deepcopy(reference).to(tdtype)
        optimizer = torch.optim.SGD(tmodel.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
        optimizer.zero_grad(set_to_none=True)
        t_loss, t_grads = ttrain.value_and_grad(tmodel, ttrain.cross_entropy, xt, yt)
        t_grads = {k: g.numpy().copy() for k, g in t_grads.items()}
        optimizer.step()
        t_after = state_dict_numpy(tmodel)

        ktrained = keras_twin(train_dtype)
        xk = x_nhwc.astype(train_dtype)
        k_loss, k_grads = ktrain.value_and_grad(ktrained, ktrain.cross_entropy, xk, y, training=True)
        k_loss = keras.ops.convert_to_numpy(k_loss)
        if k_loss.dtype.itemsize < np.dtype(train_dtype).itemsize:  # e.g. JAX without x64
            raise RuntimeError(f"Keras computed the loss in {k_loss.dtype}, asked for {train_dtype}")
        k_grads_torch = to_torch_layout(ktrained, ktrain.gradients_numpy(ktrained, k_grads))
        k_opt = keras.optimizers.SGD(learning_rate=SGD_LR, momentum=SGD_MOMENTUM)
        k_opt.apply_gradients(zip(k_grads, ktrained.trainable_variables))
        k_after = torch_state_dict(ktrained)

        if "train_loss" in checks:
            err = abs(float(k_loss) - float(t_loss.detach()))
            add("train_loss", err, "" if err <= bound_for(name, "train_loss") else diagnose(True))
        if "gradients" in checks:
            err, key = worst(k_grads_torch, t_grads)
            add("gradients", err, f"worst: {key}")
        params = [k for k, _ in tmodel.named_parameters()]
        stats = [k for k in k_after if k.endswith(("running_mean", "running_var"))]
        if "sgd_step_params" in checks:
            err, key = worst(k_after, t_after, params)
            add("sgd_step_params", err, f"worst: {key}")
        if "sgd_step_bn_stats" in checks:
            err, key = worst(k_after, t_after, stats)
            add("sgd_step_bn_stats", err, f"worst: {key}")

    if "round_trip" in checks:
        # Keras' own init -> torch-layout .safetensors -> torch twin -> its state_dict -> fresh Keras.
        from twins import checkpoints

        source = keras_impl.build(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = checkpoints.write(Path(tmp) / "k.safetensors", torch_state_dict(source))
            tmodel = torch_impl.build(name)
            load_state_dict(tmodel, checkpoints.read(path), strict=True)
        target = keras_impl.build(name)
        load_torch_state_dict(target, state_dict_numpy(tmodel), strict=True)
        a, b = source.weights, target.weights
        err = max(float(np.max(np.abs(keras.ops.convert_to_numpy(u) - keras.ops.convert_to_numpy(v))))
                  for u, v in zip(a, b))
        add("round_trip", err, f"{len(a)} variables")

    if "exclude_restore" in checks:
        new_classes = 7
        head = info.classifier
        kfresh = keras_impl.build(name, num_classes=new_classes)
        before = to_torch_layout(kfresh, {v.path: keras.ops.convert_to_numpy(v) for v in kfresh.weights})
        k_report = load_torch_state_dict(kfresh, state, exclude=head, strict=True)
        k_now = torch_state_dict(kfresh)
        tfresh = torch_impl.build(name, num_classes=new_classes)
        t_before = state_dict_numpy(tfresh)
        t_report = load_state_dict(tfresh, state, exclude=head, strict=True)
        t_now = state_dict_numpy(tfresh)
        errors = [rel_err(k_now[k], state[k]) for k in k_report.loaded]
        errors += [rel_err(t_now[k], state[k]) for k in t_report.loaded]
        head_kept = all(np.array_equal(k_now[k], before[k]) for k in k_report.skipped if k in k_now)
        head_kept &= all(np.array_equal(t_now[k], t_before[k]) for k in t_report.skipped if k in t_now)
        head_shaped = all(k_now[k].shape[0] == new_classes for k in k_report.skipped if k in k_now)
        problems = []
        if not head_kept:
            problems.append("an excluded head tensor was overwritten")
        if not head_shaped:
            problems.append(f"head does not have {new_classes} classes")
        if not k_report.skipped or not t_report.skipped:
            problems.append("nothing was skipped")
        err = max(errors) if not problems else float("inf")
        add("exclude_restore", err,
            "; ".join(problems) or f"{len(k_report.loaded)} loaded, skipped {', '.join(sorted(set(k_report.skipped)))}")
    return rows


# ----------------------------------------------------------------------------------------------
# Subprocess worker and table


def worker_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twins.parity")
    parser.add_argument("--model", required=True, action="append")
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--json-out", required=True)
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND") != args.backend:
        print(f"KERAS_BACKEND must be {args.backend!r} before keras is imported", file=sys.stderr)
        return 2
    rows = []
    for model in args.model:
        rows += [asdict(r) for r in run_model(model, batch=args.batch, size=args.size)]
    Path(args.json_out).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
