"""Loss, gradients and one optimiser step for Keras twins, on whichever backend Keras runs.
Twin of `torch_impl/training.py`.

Keras 3 has no backend-neutral gradient call, so `value_and_grad` is written once per backend, the
way Keras' own "custom train_step" guides do it. BatchNorm running statistics are updated in place
by a training-mode call, as in torch.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch; `labels` are class indices (torch's CrossEntropyLoss)."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def value_and_grad(model: keras.Model, loss_fn, x, y, training: bool = True):
    """`(loss, grads)` with `grads` aligned with `model.trainable_variables` (backend tensors)."""
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(x, training=training), y)
        grads = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        state = model.non_trainable_variables

        def compute(trainable_values, state_values):
            out, new_state = model.stateless_call(trainable_values, state_values, x, training=training)
            return loss_fn(out, y), new_state

        # One jitted forward+backward: op-by-op eager differentiation is several times slower.
        (loss, new_state), grads = jax.jit(jax.value_and_grad(compute, has_aux=True))(
            [v.value for v in variables], [v.value for v in state]
        )
        for variable, value in zip(state, new_state):
            variable.assign(value)
    elif backend == "torch":
        for variable in variables:
            variable.value.grad = None
        loss = loss_fn(model(x, training=training), y)
        loss.backward()
        grads = [variable.value.grad for variable in variables]
    else:
        raise NotImplementedError(f"no gradient rule for Keras backend {backend!r}")
    return loss, grads


def gradients_numpy(model: keras.Model, grads) -> dict[str, np.ndarray]:
    """`{variable.path: gradient}` as numpy; a variable that got no gradient maps to None."""
    return {
        v.path: None if g is None else ops.convert_to_numpy(g)
        for v, g in zip(model.trainable_variables, grads)
    }


def train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn, x, y):
    """One optimiser step; returns the loss (before the step) as a float."""
    loss, grads = value_and_grad(model, loss_fn, x, y, training=True)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return float(ops.convert_to_numpy(loss))
