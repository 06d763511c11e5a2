"""ResNet 18/34/50/101/152 in the Keras 3 functional API. Twin of `torch_impl/resnet.py`.

Layer names are the torch twin's module paths with `.` as `-` (`layer1-0-conv1`,
`layer1-0-downsample-0`, `fc`), so `keras_impl.weights` moves torchvision checkpoints in and out.
Stage outputs are layers named `stem`, `layer1` .. `layer4`, for skip taps such as
`model.get_layer("layer2").output`.
"""
from __future__ import annotations

import keras
from keras import layers

from twins.registry import check_resnet_options, resnet_stage_info

from .common import conv_bn, dense, image_input, max_pool

def conv3x3_bn(x, planes, stride=1, dilation=1, *, conv_name, bn_name):
    """Twin of `conv3x3`, with the BatchNorm every block puts after it."""
    return conv_bn(x, planes, 3, stride, dilation, dilation, conv_name=conv_name, bn_name=bn_name)


def conv1x1_bn(x, planes, stride=1, *, conv_name, bn_name):
    """Twin of `conv1x1`, with the BatchNorm every block puts after it."""
    return conv_bn(x, planes, 1, stride, conv_name=conv_name, bn_name=bn_name)


def basic_block(x, planes, stride, dilation, downsample, name):
    """Twin of torch_impl.resnet.BasicBlock (expansion 1)."""
    if dilation != 1:
        raise ValueError("BasicBlock (resnet18/34) does not support dilation; use resnet50/101/152")
    shortcut = x
    if downsample:
        shortcut = conv1x1_bn(x, planes, stride, conv_name=f"{name}-downsample-0", bn_name=f"{name}-downsample-1")
    x = conv3x3_bn(x, planes, stride, conv_name=f"{name}-conv1", bn_name=f"{name}-bn1")
    x = layers.ReLU(name=f"{name}-relu1")(x)
    x = conv3x3_bn(x, planes, conv_name=f"{name}-conv2", bn_name=f"{name}-bn2")
    x = layers.Add(name=f"{name}-add")([x, shortcut])
    return layers.ReLU(name=name)(x)


basic_block.expansion = 1


def bottleneck(x, planes, stride, dilation, downsample, name):
    """Twin of torch_impl.resnet.Bottleneck (expansion 4, stride on the 3x3 conv: v1.5)."""
    shortcut = x
    if downsample:
        shortcut = conv1x1_bn(x, planes * 4, stride, conv_name=f"{name}-downsample-0", bn_name=f"{name}-downsample-1")
    x = conv1x1_bn(x, planes, conv_name=f"{name}-conv1", bn_name=f"{name}-bn1")
    x = layers.ReLU(name=f"{name}-relu1")(x)
    x = conv3x3_bn(x, planes, stride, dilation, conv_name=f"{name}-conv2", bn_name=f"{name}-bn2")
    x = layers.ReLU(name=f"{name}-relu2")(x)
    x = conv1x1_bn(x, planes * 4, conv_name=f"{name}-conv3", bn_name=f"{name}-bn3")
    x = layers.Add(name=f"{name}-add")([x, shortcut])
    return layers.ReLU(name=name)(x)


bottleneck.expansion = 4


def make_layer(x, block, planes, blocks, stride, dilation, name):
    """Twin of ResNet._make_layer; the stage output is an Identity layer named `name`."""
    if dilation > 1:
        stride = 1
    downsample = stride != 1 or x.shape[-1] != planes * block.expansion
    x = block(x, planes, stride, dilation, downsample, f"{name}-0")
    for i in range(1, blocks):
        x = block(x, planes, 1, dilation, False, f"{name}-{i}")
    return layers.Identity(name=name)(x)


def stem_layers(x, stem, prefix=""):
    """Twin of ResNet.forward_stem plus the max-pool; the stem output layer is named `stem`."""
    if stem == "deep":
        x = conv3x3_bn(x, 64, 2, conv_name=f"{prefix}conv1", bn_name=f"{prefix}bn1")
        x = layers.ReLU(name=f"{prefix}relu1")(x)
        x = conv3x3_bn(x, 64, conv_name=f"{prefix}conv2", bn_name=f"{prefix}bn2")
        x = layers.ReLU(name=f"{prefix}relu2")(x)
        x = conv3x3_bn(x, 128, conv_name=f"{prefix}conv3", bn_name=f"{prefix}bn3")
    else:
        kernel, stride = (3, 1) if stem == "cifar" else (7, 2)
        x = conv_bn(x, 64, kernel, stride, kernel // 2, conv_name=f"{prefix}conv1", bn_name=f"{prefix}bn1")
    x = layers.ReLU(name=f"{prefix}relu")(x)
    x = layers.Identity(name=f"{prefix}stem")(x)
    if stem != "cifar":
        x = max_pool(x, 3, 2, 1, name=f"{prefix}maxpool")
    return x


def resnet_backbone(inputs, block, blocks, stem="imagenet", dilation=(1, 1, 1, 1), prefix=""):
    """Twin of `ResNet.forward_stages` (with the layers `ResNet.__init__` builds for it): the stem and the four
    stages on `inputs`; returns layer4's output. `prefix` starts every layer name:
    a model that holds the ResNet as a submodule (SimCLR's `enc`) names its layers `enc-conv1`, ..., the
    torch keys `enc.conv1.weight`, ..."""
    x = stem_layers(inputs, stem, prefix)
    for i, planes in enumerate((64, 128, 256, 512)):
        x = make_layer(x, block, planes, blocks[i], 1 if i == 0 else 2, dilation[i], f"{prefix}layer{i + 1}")
    return x


def _resnet(
    name,
    block,
    blocks,
    num_classes=1000,
    include_top=True,
    pooling=None,
    stem="imagenet",
    dilation=(1, 1, 1, 1),
    input_shape=(None, None, 3),
) -> keras.Model:
    check_resnet_options(stem, pooling, dilation)
    inputs, x = image_input(input_shape, name)
    x = resnet_backbone(x, block, blocks, stem, tuple(dilation))
    if include_top or pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if include_top:
        x = dense(x, num_classes, name="fc")
    model = keras.Model(inputs, x, name=name)
    model.stage_info = resnet_stage_info(block.expansion, stem, tuple(dilation))
    return model


def resnet18(**kwargs) -> keras.Model:
    return _resnet("resnet18", basic_block, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> keras.Model:
    return _resnet("resnet34", basic_block, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> keras.Model:
    return _resnet("resnet50", bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> keras.Model:
    return _resnet("resnet101", bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs) -> keras.Model:
    return _resnet("resnet152", bottleneck, [3, 8, 36, 3], **kwargs)
