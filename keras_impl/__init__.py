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
    """Build a registered model; `num_classes` and the builder's own options go in `kwargs`."""
    return registry.build_with(_BUILDERS, "Keras", name, **kwargs)


def source_file(name: str) -> str:
    """The file of `name`'s builder (the twin file `twins explain` reads)."""
    import inspect

    return inspect.getsourcefile(registry.builder(_BUILDERS, "Keras", name))  # an unknown name: refused with the list
