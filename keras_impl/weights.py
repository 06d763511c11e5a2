"""The weight bridge: torch-layout state_dicts in and out of Keras twins, numpy only.
Twin of `torch_impl/weights.py`.

A Keras layer's name is its torch twin's module path with `.` written as `-`, so one transpose rule
per layer kind maps every model:
  Conv2D            kernel (kh, kw, in, out)  <->  weight (out, in, kh, kw); with groups, in is in / groups on
                                                   both sides (`keras_impl.layers.Conv2d` stores every grouped and
                                                   depthwise kernel so)
  DepthwiseConv2D   kernel (kh, kw, in, m)    <->  weight (in * m, 1, kh, kw) (Keras' own depthwise layer)
  Conv2DTranspose   kernel (kh, kw, out, in)  <->  weight (in, out, kh, kw)
  Dense             kernel (in, out)          <->  weight (out, in); after a Flatten of an (H, W, C)
                                                   map the input rows go from H*W*C to C*H*W order
  BatchNorm         gamma / beta / moving_mean / moving_variance <-> weight / bias / running_mean /
                                                   running_var
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import keras
import numpy as np

from twins import checkpoints
from twins.checkpoints import CheckpointMismatchError, LoadReport

from .common import BatchNorm

_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


@dataclass
class Slot:
    """One Keras variable and the torch key it corresponds to."""

    key: str
    variable: keras.Variable
    to_torch: Callable[[np.ndarray], np.ndarray]
    from_torch: Callable[[np.ndarray], np.ndarray]
    # The rule that maps it, in words (what `twins explain` shows beside the two shapes).
    rule: str = "same layout"

    @property
    def torch_shape(self) -> tuple:
        # A zero-stride view: the layout rules only transpose and reshape, so no array of the variable's size is
        # made (vgg19_slim's fc6 kernel would be 400 MB, twice, on every load and every `twins explain`).
        return tuple(self.to_torch(np.broadcast_to(np.float32(0), tuple(self.variable.shape))).shape)


def _identity(a):
    return a


def _transpose(to_torch_axes):
    inverse = tuple(np.argsort(to_torch_axes))
    return (lambda a: np.transpose(a, to_torch_axes)), (lambda a: np.transpose(a, inverse))


# Layers that pass the tensor through unchanged in layout: a Dense behind one of them still reads the
# Flatten's row order (AlexNet's classifier.0 Dropout sits between the flatten and classifier.1).
_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Identity)


def _flatten_source_shape(layer) -> tuple | None:
    """(H, W, C) when `layer` is a Dense fed by a Flatten of a feature map, directly or through
    `_PASS_THROUGH` layers."""
    try:
        source = layer.input._keras_history.operation
        while isinstance(source, _PASS_THROUGH):
            source = source.input._keras_history.operation
    except (AttributeError, ValueError):
        return None
    if isinstance(source, keras.layers.Flatten) and len(source.input.shape) == 4:
        return tuple(source.input.shape[1:])
    return None


def _dense_rules(layer):
    """(to_torch, from_torch, rule) of a Dense kernel."""
    source = _flatten_source_shape(layer)
    if source is None:
        return (*_transpose((1, 0)), "transpose (in, out) -> (out, in)")
    h, w, c = source

    def to_torch(k):  # (H*W*C, out) -> (out, C*H*W)
        return k.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(k.shape[1], -1)

    def from_torch(t):  # (out, C*H*W) -> (H*W*C, out)
        return t.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)

    return to_torch, from_torch, (f"after Flatten of a {h}x{w}x{c} map: rows H*W*C -> C*H*W order, then "
                                  "transpose (in, out) -> (out, in)")


def _depthwise_rules(layer):
    """(to_torch, from_torch, rule) of a DepthwiseConv2D kernel: (kh, kw, in, m) holds output channel c * m + j at
    [:, :, c, j], torch's (in * m, 1, kh, kw) at [c * m + j, 0]."""
    kh, kw, channels, multiplier = tuple(layer.kernel.shape)

    def to_torch(k):
        return k.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None]

    def from_torch(t):
        return t[:, 0].transpose(1, 2, 0).reshape(kh, kw, channels, multiplier)

    return to_torch, from_torch, "depthwise (kh, kw, in, m) -> (in * m, 1, kh, kw)"


def _iter_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def slots(model: keras.Model) -> list[Slot]:
    """Every variable of `model` with its torch key and layout converters, in graph order."""
    out = []
    for layer in _iter_layers(model):
        if not layer.weights:
            continue
        prefix = layer.name.replace("-", ".")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            rules = {"kernel": _depthwise_rules(layer)}
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            # (kh, kw, in, out) -> (out, in, kh, kw); a transposed conv stores (kh, kw, out, in) and
            # torch (in, out, kh, kw), so the same permutation serves both.
            what = "(kh, kw, out, in) -> (in, out, kh, kw)" if isinstance(layer, keras.layers.Conv2DTranspose) \
                else "(kh, kw, in, out) -> (out, in, kh, kw)"
            rules = {"kernel": (*_transpose((3, 2, 0, 1)), f"transpose {what}")}
        elif isinstance(layer, keras.layers.Dense):
            rules = {"kernel": _dense_rules(layer)}
        elif isinstance(layer, (keras.layers.BatchNormalization, BatchNorm)):
            rules = {}
        else:
            raise NotImplementedError(
                f"layer {layer.name!r} ({type(layer).__name__}) holds weights but the bridge has no "
                "rule for its kind"
            )
        for variable in layer.weights:
            name = variable.name
            if name in ("kernel", "bias"):
                torch_name = "weight" if name == "kernel" else "bias"
            elif name in _BN_NAMES:
                torch_name = _BN_NAMES[name]
            else:
                raise NotImplementedError(f"variable {variable.path!r} has no torch counterpart")
            to_torch, from_torch, rule = rules.get(name, (_identity, _identity, "same layout"))
            if name in _BN_NAMES:
                rule = f"BatchNorm {name} -> {torch_name}"
            out.append(Slot(f"{prefix}.{torch_name}", variable, to_torch, from_torch, rule))
    return out


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor, handled without importing torch
        return value.detach().cpu().numpy()
    return np.asarray(value)


def load_torch_state_dict(
    model: keras.Model,
    state_dict: Mapping | str | os.PathLike,
    *,
    exclude: Iterable[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Load a torch-layout state_dict (a mapping of torch tensors or numpy arrays, or a `.pth`, `.pt`,
    `.safetensors` or `.npz` path) into `model`. Keys under an `exclude` prefix keep their fresh
    initialisation. With `strict=True` every problem is listed in one `CheckpointMismatchError`,
    raised before any variable is assigned."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = checkpoints.read(state_dict)
    state = checkpoints.strip_data_parallel(state_dict)
    by_key = {slot.key: slot for slot in slots(model)}
    report = checkpoints.match(
        {k: slot.torch_shape for k, slot in by_key.items()},
        {k: tuple(np.shape(v)) for k, v in state.items()},
        exclude=exclude,
        ignore=checkpoints.is_counter,
    )
    if strict and not report.ok:
        raise CheckpointMismatchError(report, model.name)
    for key in report.loaded:
        slot = by_key[key]
        slot.variable.assign(slot.from_torch(_as_numpy(state[key])).astype(slot.variable.dtype))
    return report


def torch_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's variables as a torch-layout state_dict of numpy arrays."""
    return {
        slot.key: np.array(slot.to_torch(keras.ops.convert_to_numpy(slot.variable)), order="C")
        for slot in slots(model)
    }


def to_torch_layout(model: keras.Model, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map `{variable.path: array}` (e.g. gradients) to `{torch key: array}` in torch layout; a None
    (a variable that got no gradient) stays None."""
    out = {}
    for slot in slots(model):
        if slot.variable.path in values:
            value = values[slot.variable.path]
            out[slot.key] = None if value is None else slot.to_torch(_as_numpy(value))
    return out


def load_file(model: keras.Model, path, *, exclude: Iterable[str] = (), strict: bool = True):
    """Restore `model` from a Keras `.weights.h5` (written by this model's architecture) or from any
    torch-layout checkpoint that `twins.checkpoints.read` accepts."""
    path = str(path)
    if path.endswith(".weights.h5"):
        if tuple(exclude):
            raise ValueError("exclude works on torch-layout checkpoints; convert the .weights.h5 first")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        model.load_weights(path)
        return None
    return load_torch_state_dict(model, path, exclude=exclude, strict=strict)
