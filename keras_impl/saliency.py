"""The saliency U-Net on ResNet-50 of seed 000 in the Keras 3 functional API. Twin of
`torch_impl/saliency.py`.

The seed's point, in code: in Keras a U-Net on a ready-made backbone needs no new `forward`. Build the
ResNet-50 backbone, take the skip tensors from it by layer name with `backbone.get_layer(NAME).output`,
add the decoder and make `Model(inputs=backbone.input, outputs=...)`. The names are ones we chose
(`stem`: after the stem's ReLU, before the max-pool; `layer1`..`layer4`: the stages' outputs), never
Keras' auto-generated `activation_9` that the seed's snippet taps. Every layer that holds weights is named
by its torch twin's module path with `.` as `-` (`conv_5-0`, `deconv4-1`), so the bridge moves the seed's
state_dict in and out.

Decoder, per scale: `deconv_block` (Conv2DTranspose 4/2, torch's padding 1 as an explicit crop, BN,
LeakyReLU 0.01: torch's default slope, Keras' is 0.3), the skip map concatenated after it (decoder
channels first, as `torch.cat([x, skip], dim=1)`), a 1x1 `conv_block` (Conv2D, BN, LeakyReLU 0.2,
Dropout). `conv_0` ends on `num_classes` maps and a sigmoid.

Freezing: `frozen` names the torch twin's top-level modules whose layers do not train (`trainable =
False`; default the seed's conv1, bn1, layer1, layer2). A frozen `BatchNorm` keeps torch's meaning: in
training mode it normalises with the batch's statistics and updates its running statistics (Keras' own
BatchNormalization would switch to inference mode).
"""
from __future__ import annotations

import keras
from keras import layers

from twins.registry import SALIENCY_FROZEN, check_frozen, get, resnet_stage_info

from .common import BatchNorm, LeakyReLU, conv2d, image_input, torch_uniform
from .resnet import bottleneck, resnet_backbone

INFO = get("saliency_unet")
NAME = "saliency_unet"


def deconv_block(x, n_output, k_size=4, stride=2, padding=1, *, name):
    """Twin of torch_impl.saliency.deconv_block (the seed's `Deconv`). Torch's transposed conv with padding p
    is the full ('valid') transposed conv with p pixels cropped off each side: written so, for any kernel
    and stride, rather than trusting Keras' 'same' to crop the same pixels. torch's default init: uniform
    with bound 1/sqrt(fan_in), fan_in = out channels x kernel area for a transposed conv."""
    x = layers.Conv2DTranspose(n_output, k_size, strides=stride, padding="valid", use_bias=False,
                               kernel_initializer=torch_uniform(n_output * k_size * k_size), name=f"{name}-0")(x)
    if padding:
        x = layers.Cropping2D(padding, name=f"{name}-0-crop")(x)
    x = BatchNorm(name=f"{name}-1")(x)
    return LeakyReLU(0.01, name=f"{name}-2")(x)


def conv_block(x, n_output, k_size=4, stride=2, padding=0, dropout=0.0, *, name):
    """Twin of torch_impl.saliency.conv_block (the seed's `Conv`): Conv2D (no bias, torch's default init),
    BN, LeakyReLU(0.2), Dropout."""
    fan_in = x.shape[-1] * k_size * k_size
    x = conv2d(x, n_output, k_size, stride, padding, kernel_initializer=torch_uniform(fan_in), name=f"{name}-0")
    x = BatchNorm(name=f"{name}-1")(x)
    x = LeakyReLU(0.2, name=f"{name}-2")(x)
    return layers.Dropout(dropout, name=f"{name}-3")(x)


def unet(backbone: keras.Model, num_classes=1, dropout=0.0, name=NAME) -> keras.Model:
    """Twin of torch_impl.saliency.Unet: the decoder on `backbone`'s named layers."""
    skip_1, skip_2, skip_3, skip_4 = (backbone.get_layer(n).output for n in ("stem", "layer1", "layer2", "layer3"))
    x5 = conv_block(backbone.get_layer("layer4").output, 512, 1, 1, 0, dropout, name="conv_5")
    x4 = deconv_block(x5, 512, 4, 2, 1, name="deconv4")
    x4 = conv_block(layers.Concatenate(name="cat4")([x4, skip_4]), 512, 1, 1, 0, dropout, name="conv_4")
    x3 = deconv_block(x4, 256, 4, 2, 1, name="deconv3")
    x3 = conv_block(layers.Concatenate(name="cat3")([x3, skip_3]), 256, 1, 1, 0, dropout, name="conv_3")
    x2 = deconv_block(x3, 128, 4, 2, 1, name="deconv2")
    x2 = conv_block(layers.Concatenate(name="cat2")([x2, skip_2]), 128, 1, 1, 0, dropout, name="conv_2")
    x1 = deconv_block(x2, 64, 4, 2, 1, name="deconv1")
    x1 = conv_block(layers.Concatenate(name="cat1")([x1, skip_1]), 64, 1, 1, 0, dropout, name="conv_1")
    x0 = deconv_block(x1, 32, 4, 2, 1, name="deconv0")
    x0 = conv_block(x0, num_classes, 3, 1, 1, dropout, name="conv_0")
    outputs = layers.Activation("sigmoid", name="sigmoid")(x0)
    return keras.Model(inputs=backbone.input, outputs=outputs, name=name)


def freeze(model: keras.Model, frozen) -> list[str]:
    """`trainable = False` for the layers of the torch twin's top-level modules in `frozen`; returns the
    frozen layer names. Twin of `torch_impl.saliency.freeze`."""
    frozen = check_frozen(frozen)
    names = []
    for layer in model.layers:
        if layer.weights and layer.name.split("-")[0] in frozen:
            layer.trainable = False
            names.append(layer.name)
    return names


def saliency_unet(num_classes=1, frozen=SALIENCY_FROZEN, dropout=0.0, input_shape=(None, None, 3)) -> keras.Model:
    """Twin of torch_impl.saliency.saliency_unet. The backbone is our ResNet-50 without its head, on an
    input that refuses a size the decoder cannot take back (height and width multiples of 32)."""
    inputs, x = image_input(input_shape, NAME, min_size=INFO.min_input_size, multiple=INFO.size_multiple,
                            why=INFO.extra["size_why"])
    backbone = keras.Model(inputs, resnet_backbone(x, bottleneck, [3, 4, 6, 3]), name="resnet50")
    model = unet(backbone, num_classes, dropout)
    freeze(model, frozen)
    model.stage_info = resnet_stage_info(bottleneck.expansion)
    return model
