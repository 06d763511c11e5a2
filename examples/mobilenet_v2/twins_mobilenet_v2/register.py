"""Registers `mobilenet_v2` with the twins toolchain when imported (the `twins.models` entry point names this
module). Each builder is an import string, so a Keras-only process never imports torch and the other way round."""
from twins.registry import ModelInfo, register

INFO = register(
    ModelInfo(
        "mobilenet_v2", "mobilenet", 224, ("classifier.1",),
        # the stem and four more stride-2 blocks: 32 px leaves a 1x1 map before the pooling
        min_input_size=32, parity_size=64,
        # dropout off in the twins the parity engine trains (two frameworks never draw the same masks)
        parity_train_options={"dropout": 0.0},
        notes="torchvision's MobileNetV2 (width 1.0): inverted residuals with depthwise 3x3 convs and ReLU6",
        key_source="torchvision's mobilenet_v2 state_dict (checked against torchvision_keys.json)",
    ),
    torch="twins_mobilenet_v2.torch_model:mobilenet_v2",
    keras="twins_mobilenet_v2.keras_model:mobilenet_v2",
)
