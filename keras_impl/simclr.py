"""SimCLR on CIFAR-10 (seed 003) in the Keras 3 functional API. Twin of `torch_impl/simclr.py`.

The encoder is the resnet18 of `keras_impl/resnet.py` with the CIFAR stem (a 3x3 stride-1 `conv1`, no
max-pool) and global average pooling, built with the name prefix `enc-` so that its layers carry the torch
twin's module paths (`enc-conv1`, `enc-layer1-0-conv1`, ...: `enc.conv1.weight`, ... through the bridge).
`simclr_ssl` ends on two outputs, `[feature, projection]` (the torch twin's `(feature, projection)`): the
512-d feature and the MLP `projector-0` (Dense 2048), ReLU, `projector-2` (Dense 128). `simclr_sl` ends
on the `linear` classifier (10 classes). The contrastive loss is a loss on the projection batch
(`keras_impl.losses.nt_xent`), not a `train_step`.
"""
from __future__ import annotations

import keras
from keras import layers

from twins.registry import get

from .common import dense, image_input
from .resnet import basic_block, resnet_backbone

FEATURE_DIM = 512
HIDDEN_DIM = 2048


def cifar_encoder(x, prefix="enc-"):
    """Twin of torch_impl.simclr.cifar_encoder on `x`: resnet18's stages with the CIFAR stem, then the
    average pool (`enc-avgpool`); returns the 512-d feature."""
    x = resnet_backbone(x, basic_block, [2, 2, 2, 2], stem="cifar", prefix=prefix)
    return layers.GlobalAveragePooling2D(name=f"{prefix}avgpool")(x)


def _input(name, input_shape):
    info = get(name)
    return image_input(input_shape, name, min_size=info.min_input_size)


def simclr_ssl(num_classes=get("simclr_ssl").num_classes, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.simclr.SSL: `model(x) -> [feature, projection]`; `num_classes` is the projection's
    dimension (the seed's `projection_dim`, 128)."""
    inputs, x = _input("simclr_ssl", input_shape)
    feature = cifar_encoder(x)
    z = dense(feature, HIDDEN_DIM, name="projector-0")
    z = layers.ReLU(name="projector-1")(z)
    projection = dense(z, num_classes, name="projector-2")
    return keras.Model(inputs, [feature, projection], name="simclr_ssl")


def simclr_sl(num_classes=get("simclr_sl").num_classes, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.simclr.SL: `model(x) -> logits`."""
    inputs, x = _input("simclr_sl", input_shape)
    logits = dense(cifar_encoder(x), num_classes, name="linear")
    return keras.Model(inputs, logits, name="simclr_sl")
