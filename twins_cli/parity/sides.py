"""Setting up both sides: the torch reference, BatchNorm statistics moved off their identity values, the
batches' labels per task, the float64 switches of a Keras run, TF32 off, and where the Keras twin runs.
"""
from __future__ import annotations

import contextlib

import numpy as np

from twins import registry

from .compare import nchw_to_nhwc


@contextlib.contextmanager
def keras_dtype(dtype: str):
    """Build and run Keras models under a dtype policy, floatx included (the optimiser's learning
    rate is a floatx variable).

    float64 needs two more switches, both undone on exit so that float32 work later in the same
    process runs as it would in a fresh one: JAX's x64 mode, and Keras' own 32-bit cap on type
    promotion. Keras' `result_type` maps every 64-bit result to 32 bits ("aligned with JAX's default
    behaviour", i.e. x64 off), so ops that promote through it (`ops.mean` in GlobalAveragePooling2D
    and in the loss on jax and torch, `ops.matmul` in Dense on torch) compute a float64 model in
    float32: a ~1e-7 error that a second training step amplifies to 1e-1. The twins stay plain
    Keras; the parity engine lifts the cap for its float64 runs."""
    import keras

    x64_before = None
    cap = {}
    if dtype == "float64":
        from keras.src.backend.common import dtypes as keras_dtypes

        cap = getattr(keras_dtypes, "BIT64_TO_BIT32_DTYPE", {})
        if keras.backend.backend() == "jax":
            import jax

            x64_before = bool(jax.config.jax_enable_x64)
            jax.config.update("jax_enable_x64", True)
    saved_cap = dict(cap)
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    cap.clear()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    try:
        if dtype == "float64" and keras.backend.result_type("float64", "float32") != "float64":
            raise RuntimeError("Keras still promotes float64 to float32 (keras.backend.result_type); this Keras "
                               f"{keras.__version__} needs another way to lift its 32-bit cap for float64 parity")
        yield
    finally:
        cap.update(saved_cap)
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)
        if x64_before is not None:
            import jax

            jax.config.update("jax_enable_x64", x64_before)


def disable_tf32(backend: str) -> None:
    """Full float32 for both twins: the torch reference and the Keras backend."""
    from twins_cli.precision import set_tf32

    set_tf32("torch", False)
    if backend != "torch":
        set_tf32(backend, False)


def randomize_batchnorm(model, seed: int) -> None:
    """Fresh BatchNorm is an identity in eval mode (mean 0, var 1, gamma 1, beta 0); move every
    statistic and affine parameter off those values so an eval comparison tests them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def randomize_keras_batchnorm(model, seed: int) -> None:
    """The Keras-side twin of `randomize_batchnorm`, by variable name (not through the bridge, which
    the round trip is testing)."""
    import keras

    rng = np.random.RandomState(seed)
    draws = {
        "gamma": lambda c: 0.5 + rng.rand(c),
        "beta": lambda c: 0.1 * rng.randn(c),
        "moving_mean": lambda c: 0.1 * rng.randn(c),
        "moving_variance": lambda c: 0.5 + rng.rand(c),
    }
    for variable in model.weights:
        if variable.name in draws and len(variable.shape) == 1:
            variable.assign(draws[variable.name](variable.shape[0]).astype(keras.backend.standardize_dtype(variable.dtype)))


def keras_values(model) -> dict[str, np.ndarray]:
    """`{variable.path: numpy}`: the Keras model's own view, independent of the bridge."""
    import keras

    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def labels_for(output_shape: tuple, rng: np.random.RandomState, task: str = "classification") -> np.ndarray:
    """What the training loss compares an NCHW-style output with: for a classifier, class indices shaped like
    the output without its class axis (axis 1); for a saliency map, a target map in [0, 1] of the output's
    shape; for the contrastive loss nothing (the rows' pairing is the target): zeros, one per row."""
    if task == "contrastive":
        return np.zeros(output_shape[0], np.int64)
    if task == "saliency":
        return rng.rand(*output_shape).astype(np.float32)
    classes = output_shape[1]
    labels = rng.randint(0, classes, size=(output_shape[0], *output_shape[2:])).astype(np.int64)
    if task == "segmentation":  # a fifth of the pixels carry the ignore label, which the loss must skip
        labels[rng.rand(*labels.shape) < 0.2] = registry.IGNORE_LABEL
    return labels


def keras_labels(labels: np.ndarray, dtype: str) -> np.ndarray:
    """`labels_for`'s labels for the Keras twin: class indices carry no channel axis and read the same in
    both layouts; a target map moves its channel axis last and takes the training dtype."""
    if labels.dtype.kind == "f":
        return nchw_to_nhwc(labels).astype(dtype)
    return labels



def keras_device(backend: str) -> str:
    """Where the Keras twin runs: each backend puts it on a GPU when it sees one."""
    if backend == "jax":
        import jax

        return "cuda" if any(d.platform == "gpu" for d in jax.devices()) else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def reference_twin(model: str, options: dict, seed: int):
    """The torch twin every check compares against: seeded init, BatchNorm statistics randomised, eval mode."""
    import torch

    import torch_impl

    torch.manual_seed(seed)
    reference = torch_impl.build(model, **options).eval()
    randomize_batchnorm(reference, seed)
    return reference
