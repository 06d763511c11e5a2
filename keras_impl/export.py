"""The Keras twin as a deployment artifact. Twin of `torch_impl/export.py`.

`export(model, path, fmt, size)` is Keras 3's own `model.export(format=...)` with an input signature of
square `size` x `size` NHWC float32 images and the batch left free (`None`). Which format works depends on
the backend Keras runs on (Keras 3.15.1):
- `tf_saved_model` (a folder; `tf.saved_model.load(path).serve`): tensorflow; jax through jax2tf;
- `onnx`: tensorflow through tf2onnx, torch through torch.onnx; jax needs jax2onnx;
- `litert` (`.tflite`): tensorflow through the TFLite converter; torch needs litert-torch;
- `torch` (`.pt2`, `torch.export.load`): the torch backend only;
- `openvino` (`.xml` with a `.bin` beside it): tensorflow and torch.
`twins.exports.KERAS_LIMITS` records, per pair that fails here, what stops it. The model must be built
for that size (`input_shape=(size, size, 3)`): a layer that needs static spatial sizes (adaptive pooling)
then sees them while Keras traces the export. `options` go to `model.export` as they are (on the torch
backend, format `torch` needs `dynamic_shapes`, which only torch can make; the caller passes them).
"""
from __future__ import annotations

import contextlib
import gc
import threading
import time

import keras

from twins.exports import FORMATS as _FORMATS

FORMATS = _FORMATS["keras"]


def input_signature(size: int) -> list:
    return [keras.InputSpec(shape=(None, size, size, 3), dtype="float32")]


def inference_view(model: keras.Model) -> keras.Model:
    """The model without its aux heads: a twin whose output layer is `common.Logits` (inception_v3, pspnet)
    keeps the aux heads in its graph for training, and an exported graph would compute them (OpenVINO even
    lists them as outputs); the view's output is the logits `Logits` passes through, as torch's eval mode."""
    from keras_impl.common import Logits

    last = model.get_layer(model.layers[-1].name)
    if not isinstance(last, Logits):
        return model
    return keras.Model(model.inputs, last.input[0], name=model.name)


def export(model: keras.Model, path: str, fmt: str, size: int, **options) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown Keras export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    built = tuple(model.inputs[0].shape[1:3])
    if built != (size, size):
        raise ValueError(f"the model is built for {built[0]}x{built[1]} inputs, the export for {size}x{size}; "
                         f"build it with input_shape=({size}, {size}, 3)")
    # tf2onnx (ONNX on tensorflow) copies the graph, every constant in it, in each of its optimiser passes; the
    # copies are reference cycles, and Python's collector counts objects, not bytes, so they pile up: vgg11_bn's
    # export (133 M parameters) was killed at 23 GB with 24 GB on the machine. Collected every second: 10 GB.
    tf2onnx = fmt == "onnx" and keras.backend.backend() == "tensorflow"
    with collecting_cycles() if tf2onnx else contextlib.nullcontext():
        inference_view(model).export(str(path), format=fmt, verbose=False, input_signature=input_signature(size),
                                     **options)


@contextlib.contextmanager
def collecting_cycles(interval: float = 1.0, share: float = 0.1):
    """Collect Python's cyclic garbage while the block runs (a thread): every `interval` seconds, or less often
    where a collection takes long (in a process with much alive and nothing frozen), so that collecting takes at
    most `share` of the time. The process's frozen objects (`gc.freeze`, the parity processes' imports) stay
    frozen: each pass scans what is not."""
    stop = threading.Event()

    def collect():
        wait = interval
        while not stop.wait(wait):
            began = time.perf_counter()
            gc.collect()
            wait = max(interval, (time.perf_counter() - began) / share)

    thread = threading.Thread(target=collect, name="collecting_cycles", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
