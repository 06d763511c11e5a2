"""Keras 3 functional-API twins. Twin package of `torch_impl`: same names, same builders, NHWC input.

    model = keras_impl.build("resnet50", num_classes=10)

Runs on the tensorflow, jax and torch Keras backends (`KERAS_BACKEND`).
"""
from __future__ import annotations

import keras

from twins import registry

from . import resnet
from . import alexnet, vgg
from . import densenet, squeezenet
from . import inception
from . import vgg_slim
from . import saliency
from . import simclr
from . import pspnet

_BUILDERS = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
    "alexnet": alexnet.alexnet,
    "vgg11_bn": vgg.vgg11_bn,
    "squeezenet1_0": squeezenet.squeezenet1_0,
    "densenet121": densenet.densenet121,
    "inception_v3": inception.inception_v3,
    "vgg19_slim": vgg_slim.vgg19_slim,
    "saliency_unet": saliency.saliency_unet,
    "simclr_ssl": simclr.simclr_ssl,
    "simclr_sl": simclr.simclr_sl,
    "pspnet": pspnet.pspnet,
}


def list_models() -> list[str]:
    return registry.available(_BUILDERS)


def build(name: str, **kwargs) -> keras.Model:
    """Build a registered model; `num_classes` and the builder's own options go in `kwargs`. A pair registered from
    outside this package (`twins.registry.register`) is checked against its torch twin the first time it is built
    in a process (`check_pair`)."""
    model = registry.build_with(_BUILDERS, "Keras", name, **kwargs)
    if name in registry.PLUGINS and name not in _CHECKED_PAIRS:
        check_pair(name, model, kwargs)
        _CHECKED_PAIRS.add(name)
    return model


_CHECKED_PAIRS: set[str] = set()


def check_pair(name: str, model: keras.Model, options: dict) -> None:
    """Raise `registry.PairError` listing, in one message, every Keras weight whose layer name maps to no key of
    the torch twin's state_dict (`weights.slots`: the layer name with `-` for `.`, plus `weight`/`bias`/BatchNorm's
    names), every torch key with no Keras weight, and every key whose shapes differ in torch's layout. The torch
    twin is built with the same options (less the Keras-only `input_shape`); without torch installed, nothing is
    checked."""
    try:
        import torch_impl
    except ImportError:
        return
    from twins import checkpoints

    from . import weights

    torch_state = torch_impl.build(name, **{k: v for k, v in options.items() if k != "input_shape"}).state_dict()
    try:
        keras_slots = weights.slots(model)
    except NotImplementedError as error:
        raise registry.PairError(f"the registered pair {name!r}: {error}") from None
    keras_shapes = {slot.key: tuple(slot.torch_shape) for slot in keras_slots}
    torch_shapes = {k: tuple(v.shape) for k, v in torch_state.items() if not checkpoints.is_counter(k)}
    layer_of = {slot.key: slot.variable.path.rsplit("/", 1)[0] for slot in keras_slots}
    keras_only = [k for k in keras_shapes if k not in torch_shapes]
    torch_only = [k for k in torch_shapes if k not in keras_shapes]
    shapes = [k for k in keras_shapes if k in torch_shapes and keras_shapes[k] != torch_shapes[k]]
    if not (keras_only or torch_only or shapes):
        return
    lines = [f"the registered pair {name!r} does not correspond: its Keras twin's weights (layer name with '-' for "
             f"'.', then weight/bias/BatchNorm's names) and its torch twin's state_dict keys differ"]
    if keras_only:
        lines.append(f"  {len(keras_only)} Keras weights map to no torch key: "
                     + ", ".join(f"{k} (layer {layer_of[k]})" for k in keras_only))
    if torch_only:
        lines.append(f"  {len(torch_only)} torch keys have no Keras layer: " + ", ".join(torch_only))
    if shapes:
        lines.append(f"  {len(shapes)} keys differ in shape (torch layout): "
                     + ", ".join(f"{k} Keras {keras_shapes[k]} torch {torch_shapes[k]}" for k in shapes))
    raise registry.PairError("\n".join(lines))


def source_file(name: str) -> str:
    """The file of `name`'s builder (the twin file `twins explain` reads)."""
    import inspect

    return inspect.getsourcefile(registry.builder(_BUILDERS, "Keras", name))  # an unknown name: refused with the list
