"""Comparing the twins: the worst tensor over a set of keys, key sets compared from both sides, layouts,
and the first layer (in Keras graph order) whose output diverges from its torch twin's.

Metric: relative max error `max|a - b| / max(max|b|, 1e-6)` with the torch result as `b` (`twins.metrics`);
a NaN or an infinity on either side makes it `inf`; an empty comparison is an error, never a pass.
"""
from __future__ import annotations

import copy

import numpy as np

from twins.metrics import rel_err



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



def graded(keras: dict, torch32: dict, truth: dict, keys, bound: float, multiple: float) -> tuple[float, float, str]:
    """The eval checks' verdict against the truth (`truth`: the torch twin in float64): `(error, allowed, detail)`
    where `error` is the Keras twin's distance from the truth (`rel_err`, the truth as the reference) and `allowed`
    the larger of `bound` and `multiple` times torch float32's own distance from it, for the key that is furthest
    over (or nearest) its allowance; the detail names the key and gives both distances and the Keras twin's distance
    from torch float32 (the comparison before grading)."""
    keys = list(keys)
    if not keys:
        raise ValueError("nothing to compare: the key list is empty")
    result = None
    for k in keys:
        got, want, exact = keras.get(k), torch32.get(k), truth.get(k)
        if got is None or want is None or exact is None:
            return float("inf"), bound, f"no value for {k}"
        if np.shape(got) != np.shape(exact):
            return float("inf"), bound, f"{k}: shape {np.shape(got)} against the torch twin's {np.shape(exact)}"
        k_err, t_err = rel_err(got, exact), rel_err(want, exact)
        # a torch float32 result that is not finite widens nothing: the bound is the check's own
        allowed = max(bound, multiple * t_err) if np.isfinite(t_err) else bound
        if result is None or k_err / allowed > result[0] / result[1]:
            result = (k_err, allowed, k, t_err, rel_err(got, want))
    k_err, allowed, k, t_err, plain = result
    where = f"{k}: " if len(keys) > 1 else ""
    return k_err, allowed, (f"{where}Keras {k_err:.1e} from torch float64, torch float32 {t_err:.1e} "
                            f"(bound max({bound:.0e}, {multiple:g} x {t_err:.1e})); Keras against torch float32 "
                            f"{plain:.1e}")


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

