"""torchvision's MobileNetV2 as a twin pair from outside the twins repository.

- `torch_model.py`: the torch twin, its modules and state_dict keys as torchvision's (`features.1.conv.0.0.weight`,
  ...), so torchvision's checkpoint files load with `strict=True`.
- `keras_model.py`: the Keras twin, written with `keras_impl.layers` alone, each layer named by its torch twin's
  module path with `.` written as `-`.
- `register.py`: `twins.registry.register(...)`, imported through this package's `twins.models` entry point
  (or `TWINS_PLUGINS=twins_mobilenet_v2.register`).

Nothing here imports a framework until a builder is called: the torch builder imports torch, the Keras one keras.
"""
