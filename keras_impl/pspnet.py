"""PSPNet (seed 004, hszhao/semseg's `PSPNet`) in the Keras 3 functional API. Twin of `torch_impl/pspnet.py`.

Layer names are the torch twin's module paths with `.` as `-`: the deep stem `layer0-0` (conv1),
`layer0-1` (bn1), `layer0-3`, `layer0-4`, `layer0-6`, `layer0-7`, `layer0-9` (max-pool); `layer1` ..
`layer4` as in `keras_impl.resnet` (layer3 dilated 2, layer4 dilated 4, stride 1); the pyramid pooling
module `ppm-features-{i}-{0..3}` with each branch upsampled by `ppm-features-{i}-upsample` and concatenated
by `ppm`; the heads `cls-0` .. `cls-4` and `aux-0` .. `aux-4`. So `keras_impl.weights` moves the seed's
checkpoints in and out.

Outputs: the logits, NHWC `(N, h, w, classes)` with `h = (H - 1) / 8 * zoom_factor + 1`, upsampled with
`align_corners=True` by `AlignCornersResize` (Keras' own resize ops have no such mode). The torch twin
computes the `aux` head in training mode only; a functional model runs its whole graph in every mode, so
here the aux head is always part of the graph (the `logits` layer takes it as a second input and passes
the main logits through) and `keras_impl.training.training_view(model, ("aux",))` exposes it as a second
output, trained with loss weight 0.4. In eval mode it costs a 3x3 conv (1024 -> 256) and a 1x1 conv at 1/8
size and one more upsampling, small beside the 4096-channel `cls` head.
"""
from __future__ import annotations

import keras
from keras import layers

from twins.registry import check_pspnet_options, get

from .common import (AdaptiveAveragePool, AlignCornersResize, BatchNorm, Logits, conv2d, image_input, max_pool,
                     torch_uniform)
from .resnet import bottleneck, conv3x3_bn, make_layer

INFO = get("pspnet")
BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}  # the seed's `layers` (resnet50/101/152's)
DILATION = (1, 1, 2, 4)  # torch_impl.pspnet's `dilation=(1, 1, 2, 4)`: layer3 and layer4 keep stride 1


def layer0(x):
    """The seed's `layer0` Sequential: the deep stem (conv1 3x3/2, conv2, conv3, each with BN and ReLU) and
    the max-pool, named by position."""
    x = conv3x3_bn(x, 64, 2, conv_name="layer0-0", bn_name="layer0-1")
    x = layers.ReLU(name="layer0-2")(x)
    x = conv3x3_bn(x, 64, conv_name="layer0-3", bn_name="layer0-4")
    x = layers.ReLU(name="layer0-5")(x)
    x = conv3x3_bn(x, 128, conv_name="layer0-6", bn_name="layer0-7")
    x = layers.ReLU(name="layer0-8")(x)
    return max_pool(x, 3, 2, 1, name="layer0-9")


def ppm(x, reduction_dim, bins, name="ppm"):
    """Twin of torch_impl.pspnet.PPM: per bin an adaptive average pool, 1x1 conv, BN, ReLU, upsampled back
    to the map's size corner to corner; `[x, branches...]` concatenated on the channel axis."""
    out = [x]
    for i, bin in enumerate(bins):
        prefix = f"{name}-features-{i}"
        y = AdaptiveAveragePool(bin, name=f"{prefix}-0")(x)
        y = conv2d(y, reduction_dim, 1, name=f"{prefix}-1", kernel_initializer=torch_uniform(x.shape[-1]))
        y = BatchNorm(name=f"{prefix}-2")(y)
        y = layers.ReLU(name=f"{prefix}-3")(y)
        out.append(AlignCornersResize(name=f"{prefix}-upsample")([y, x]))
    return layers.Concatenate(name=name)(out)


def head(x, mid_dim, classes, dropout, name):
    """Twin of torch_impl.pspnet.head: 3x3 conv, BN, ReLU, Dropout2d (SpatialDropout2D: whole channels, as
    torch's), 1x1 conv with bias; torch's default init for both convs (the seed leaves them as created)."""
    x = conv2d(x, mid_dim, 3, padding=1, name=f"{name}-0", kernel_initializer=torch_uniform(9 * x.shape[-1]))
    x = BatchNorm(name=f"{name}-1")(x)
    x = layers.ReLU(name=f"{name}-2")(x)
    x = layers.SpatialDropout2D(dropout, name=f"{name}-3")(x)
    return conv2d(x, classes, 1, use_bias=True, name=f"{name}-4", kernel_initializer=torch_uniform(mid_dim),
                  bias_initializer=torch_uniform(mid_dim))


def upsample(x, zoom_factor, name):
    """The seed's `F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)` with
    `h = (H - 1) / 8 * zoom + 1`, which is the map's `(size - 1) * zoom + 1`; none for zoom 1."""
    if zoom_factor == 1:
        return layers.Identity(name=name)(x)
    return AlignCornersResize(zoom_factor, name=name)(x)


def pspnet(layers=50, bins=(1, 2, 3, 6), dropout=0.1, num_classes=INFO.num_classes, zoom_factor=8, use_ppm=True,
           input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.pspnet.PSPNet, with the seed's options (`layers` 50/101/152, `bins`, `dropout`,
    its `classes` as `num_classes`, `zoom_factor`, `use_ppm`). `layers` shadows the Keras module here, as
    the seed's argument name is kept: the body calls only this file's helpers."""
    check_pspnet_options(layers, bins, num_classes, zoom_factor)
    inputs, x = image_input(input_shape, "pspnet", min_size=INFO.min_input_size, multiple=INFO.size_multiple,
                            offset=INFO.size_offset, why=INFO.extra["size_why"])
    x = layer0(x)
    stages = {}
    for i, planes in enumerate((64, 128, 256, 512)):
        name = f"layer{i + 1}"
        x = stages[name] = make_layer(x, bottleneck, planes, BLOCKS[layers][i], 1 if i == 0 else 2, DILATION[i], name)
    fea_dim = 2048
    if use_ppm:
        x = ppm(x, fea_dim // len(bins), bins)
    x = upsample(head(x, 512, num_classes, dropout, "cls"), zoom_factor, "cls-upsample")
    # The aux logits' layer is named `aux`, the torch module path of the head whose output they are (the
    # registry's `aux_heads`): `training_view` finds a model's aux outputs by those paths.
    aux = upsample(head(stages["layer3"], 256, num_classes, dropout, "aux"), zoom_factor, "aux")
    x = Logits(name="logits")([x, aux])
    return keras.Model(inputs, x, name="pspnet")
