"""DenseNet-121 in the Keras 3 functional API. Twin of `torch_impl/densenet.py`.

Layer names are the torch twin's module paths with `.` as `-` (`features-conv0`, `features-norm0`,
`features-denseblock1-denselayer1-norm1`, `features-transition1-conv`, `features-norm5`,
`classifier`), so `keras_impl.weights` moves torchvision checkpoints in and out. A dense block's
output is the Concatenate layer named by its path (`features-denseblock1`), a dense layer's new
features the Identity named by its path (`features-denseblock1-denselayer1`).
"""
from __future__ import annotations

import keras
from keras import layers

from twins import registry

from .common import BatchNorm, conv2d, dense, image_input, max_pool


def dense_layer(features, growth_rate, bn_size, drop_rate, name):
    """Twin of torch_impl.densenet._DenseLayer: `features` is the list of every earlier feature map
    of the block, concatenated in list order as torch.cat(features, 1); returns the new features."""
    x = layers.Concatenate(axis=-1, name=f"{name}-cat")(features) if len(features) > 1 else features[0]
    x = BatchNorm(name=f"{name}-norm1")(x)
    x = layers.ReLU(name=f"{name}-relu1")(x)
    x = conv2d(x, bn_size * growth_rate, 1, kernel_initializer=he_normal(), name=f"{name}-conv1")
    x = BatchNorm(name=f"{name}-norm2")(x)
    x = layers.ReLU(name=f"{name}-relu2")(x)
    x = conv2d(x, growth_rate, 3, padding=1, kernel_initializer=he_normal(), name=f"{name}-conv2")
    if drop_rate > 0:
        x = layers.Dropout(drop_rate, name=f"{name}-dropout")(x)
    return layers.Identity(name=name)(x)


def dense_block(x, num_layers, bn_size, growth_rate, drop_rate, name):
    """Twin of torch_impl.densenet._DenseBlock: [input, new_1, ..., new_n] concatenated on channels."""
    features = [x]
    for i in range(num_layers):
        features.append(dense_layer(features, growth_rate, bn_size, drop_rate, f"{name}-denselayer{i + 1}"))
    return layers.Concatenate(axis=-1, name=name)(features)


def transition(x, num_output_features, name):
    """Twin of torch_impl.densenet._Transition."""
    x = BatchNorm(name=f"{name}-norm")(x)
    x = layers.ReLU(name=f"{name}-relu")(x)
    x = conv2d(x, num_output_features, 1, kernel_initializer=he_normal(), name=f"{name}-conv")
    return layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}-pool")(x)


def densenet(
    inputs,
    x,
    growth_rate=32,
    block_config=(6, 12, 24, 16),
    num_init_features=64,
    bn_size=4,
    drop_rate=0.0,
    num_classes=1000,
    name="densenet121",
) -> keras.Model:
    """Twin of torch_impl.densenet.DenseNet, on the checked input `x` of `inputs`."""
    x = conv2d(x, num_init_features, 7, 2, 3, kernel_initializer=he_normal(), name="features-conv0")
    x = BatchNorm(name="features-norm0")(x)
    x = layers.ReLU(name="features-relu0")(x)
    x = max_pool(x, 3, 2, 1, name="features-pool0")
    num_features = num_init_features
    for i, num_layers in enumerate(block_config):
        x = dense_block(x, num_layers, bn_size, growth_rate, drop_rate, f"features-denseblock{i + 1}")
        num_features += num_layers * growth_rate
        if i != len(block_config) - 1:
            x = transition(x, num_features // 2, f"features-transition{i + 1}")
            num_features //= 2
    x = BatchNorm(name="features-norm5")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = dense(x, num_classes, bias_initializer="zeros", name="classifier")  # torch default weight, zero bias
    return keras.Model(inputs, x, name=name)


def he_normal():
    """torchvision's DenseNet conv init, kaiming_normal_ (fan_in, gain sqrt(2)): N(0, 2 / fan_in),
    not truncated (keras.initializers.HeNormal truncates)."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_in", distribution="untruncated_normal")


def _densenet(name, growth_rate, block_config, num_init_features, input_shape=(None, None, 3), **kwargs):
    inputs, x = image_input(input_shape, name, min_size=registry.get(name).min_input_size)
    return densenet(inputs, x, growth_rate, block_config, num_init_features, name=name, **kwargs)


def densenet121(**kwargs) -> keras.Model:
    """`num_classes` (1000), `bn_size` (4) and `drop_rate` (0.0), as torchvision's."""
    return _densenet("densenet121", 32, (6, 12, 24, 16), 64, **kwargs)
