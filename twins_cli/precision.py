"""TF32 on and off, once for the parity engine and the benchmark worker.

TF32 is on by default in TensorFlow and JAX and partly in torch; on an Ampere-or-newer GPU it would
swamp a 1e-5 parity bound, and a throughput figure must say which it ran with. Each framework is
imported only when asked for. Harmless on a CPU.
"""
from __future__ import annotations


def set_tf32(framework: str, enabled: bool) -> None:
    """`framework` is "torch", "jax" or "tensorflow"."""
    if framework == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
    elif framework == "jax":
        import jax

        # "highest" = full float32 matmuls/convolutions; "tensorfloat32" allows TF32.
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if enabled else "highest")
    elif framework == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(enabled)
    else:
        raise ValueError(f"unknown framework {framework!r}; expected torch, jax or tensorflow")
