"""Loss, gradients and the optimiser for Keras twins, on whichever backend Keras runs.
Twin of `torch_impl/training.py`.

Keras 3 has no backend-neutral gradient call, so `value_and_grad_fn` is written once per backend, the
way Keras' own "custom train_step" guides do it. BatchNorm running statistics are updated in place
by a training-mode call, as in torch.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .losses import nt_xent, segmentation_cross_entropy


def with_aux(loss, outputs, labels, aux_weight: float = 0.4):
    """`loss(logits) + aux_weight * loss(aux)` per auxiliary head when `outputs` is `(logits, aux, ...)` (a
    `training_view` with aux heads: inception, pspnet), else `loss(outputs)`: the seeds' aux recipe, once for
    every per-output loss."""
    if isinstance(outputs, (tuple, list)):
        main, *aux = outputs
        return loss(main, labels) + sum(aux_weight * loss(a, labels) for a in aux)
    return loss(outputs, labels)


def sparse_cross_entropy(logits, labels):
    """torch's `F.cross_entropy` (mean over every position) in keras.ops."""
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))


def cross_entropy(outputs, labels, aux_weight: float = 0.4):
    """Mean softmax cross-entropy over the class axis (the last one, NHWC); `labels` are class indices
    shaped like the logits without that axis: torch's CrossEntropyLoss, for classifiers and for maps.
    A `[logits, aux, ...]` list (a `training_view` with auxiliary heads) gives CE(logits) +
    aux_weight * CE(aux) per auxiliary head."""
    return with_aux(sparse_cross_entropy, outputs, labels, aux_weight)


def mean_squared_error(outputs, targets):
    """Twin of `torch_impl.training.mean_squared_error`: the mean over every element (NHWC maps)."""
    return ops.mean(ops.square(ops.subtract(outputs, ops.cast(targets, outputs.dtype))))


def segmentation_loss(outputs, labels, aux_weight: float = 0.4):
    """PSPNet's training loss: `main + aux_weight * aux`, each the cross-entropy over the labelled pixels
    (255 ignored); `outputs` is `(logits, aux_logits)` (training mode) or the logits alone."""
    return with_aux(segmentation_cross_entropy, outputs, labels, aux_weight)


def loss_for(task: str, aux_weight: float = 0.4, temperature: float = 0.5):
    """Twin of `torch_impl.training.loss_for`: "classification" cross-entropy (with aux heads), "saliency"
    MSE, "contrastive" NT-Xent of the projection output (`[feature, projection]`; the labels are not read),
    "segmentation" main + aux cross-entropy ignoring 255."""
    if task == "classification":
        return lambda outputs, labels: cross_entropy(outputs, labels, aux_weight)
    if task == "saliency":
        return mean_squared_error
    if task == "contrastive":
        return lambda outputs, labels: nt_xent(outputs[1], temperature)
    if task == "segmentation":
        return lambda outputs, labels: segmentation_loss(outputs, labels, aux_weight)
    raise ValueError(f"no training loss for task {task!r}")


def training_view(model: keras.Model, aux_heads=()) -> keras.Model:
    """The model to train: `model` itself, or, with auxiliary heads (torch module paths such as
    `AuxLogits.fc`), a functional view on the same layers whose outputs are `[logits, aux...]`. The
    torch twin returns the aux logits in training mode only; a Keras model keeps one set of outputs,
    so the extra outputs live in this view (Keras' way: extra outputs with loss weights, no
    backend-specific train_step)."""
    if not aux_heads:
        return model
    aux = [model.get_layer(head.replace(".", "-")).output for head in aux_heads]
    return keras.Model(model.inputs, [model.outputs[0], *aux], name=f"{model.name}_training")


def _exact(value: float, variable):
    """A Python float as an array of the variable's dtype: `ops.cast(0.9, "float64")` goes through a float32
    tensor on tensorflow (0.899999976), which the float64 parity checks see."""
    return ops.convert_to_tensor(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


@keras.saving.register_keras_serializable(package="twins")
class MomentumSGD(keras.optimizers.Optimizer):
    """SGD with momentum in torch's (and TF1 `MomentumOptimizer`'s, the seeds') form:
    `b = momentum * b + g; p -= lr * b`. Keras' own SGD keeps `v = momentum * v - lr * g; p += v`,
    which folds the rate into the velocity: the same updates while the rate is constant, different ones
    under a decaying schedule (a step's momentum would carry the rates of earlier steps). Written with
    the optimizer API only (`assign`, `keras.ops`), so it runs on every backend without a per-backend
    `train_step`."""

    def __init__(self, learning_rate=0.01, momentum=0.0, name="momentum_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, _exact(self.momentum, variable)), gradient))
        self.assign_sub(variable, ops.multiply(buffer, lr))

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


@keras.saving.register_keras_serializable(package="twins")
class TorchAdam(keras.optimizers.Optimizer):
    """Adam in torch's form (`torch.optim.Adam`, the saliency seed's optimiser):
    `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    Keras' own Adam folds the bias corrections into the rate and adds `eps` to the uncorrected `sqrt(v)`
    (`p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`): its eps is effectively
    `eps / sqrt(1 - b2^t)` larger, 10x at the first step with b2 = 0.99, which moves every parameter whose
    gradient is within a few orders of eps (and its default eps is 1e-7, torch's 1e-8). Written with the
    optimizer API only, so it runs on every backend."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="torch_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        if not epsilon >= 0.0:
            raise ValueError(f"epsilon must be at least 0, got {epsilon}")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.exp_avgs = [self.add_variable_from_reference(v, "exp_avg") for v in variables]
        self.exp_avg_sqs = [self.add_variable_from_reference(v, "exp_avg_sq") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m, v = self.exp_avgs[index], self.exp_avg_sqs[index]
        step = ops.cast(self.iterations + 1, dtype)
        b1, b2 = _exact(self.beta_1, variable), _exact(self.beta_2, variable)
        # torch: exp_avg.lerp_(grad, 1 - beta1), exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.assign(m, ops.add(m, ops.multiply(ops.subtract(gradient, m), _exact(1.0 - self.beta_1, variable))))
        self.assign(v, ops.add(ops.multiply(v, b2),
                               ops.multiply(ops.square(gradient), _exact(1.0 - self.beta_2, variable))))
        correction1 = ops.subtract(_exact(1.0, variable), ops.power(b1, step))
        correction2 = ops.subtract(_exact(1.0, variable), ops.power(b2, step))
        denom = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction2)), _exact(self.epsilon, variable))
        self.assign_sub(variable, ops.multiply(ops.divide(m, denom), ops.divide(lr, correction1)))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


def adam(learning_rate, betas=(0.9, 0.999), eps: float = 1e-8) -> TorchAdam:
    """Twin of `torch_impl.training.adam`: torch's Adam (`TorchAdam`); `learning_rate` is a float or a
    `RateTable`."""
    beta_1, beta_2 = betas
    return TorchAdam(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=eps)


@keras.saving.register_keras_serializable(package="twins")
class RateTable(keras.optimizers.schedules.LearningRateSchedule):
    """The rate of step i is `rates[i]` (`twins.optim.learning_rates`, the table the torch trainer reads
    too): one schedule function, identical float32 rates in both frameworks at every step. Past the
    table's end the last rate holds."""

    def __init__(self, rates):
        self.rates = np.asarray(rates, np.float32)

    def __call__(self, step):
        index = ops.minimum(ops.cast(step, "int32"), len(self.rates) - 1)
        return ops.take(ops.convert_to_tensor(self.rates), index)

    def get_config(self):
        return {"rates": self.rates.tolist()}


def sgd(learning_rate, momentum: float = 0.0) -> MomentumSGD:
    """Twin of `torch_impl.training.sgd`: torch's SGD with momentum (`MomentumSGD`); `learning_rate` is a
    float or a `RateTable`."""
    return MomentumSGD(learning_rate=learning_rate, momentum=momentum)


@keras.saving.register_keras_serializable(package="twins")
class SlimL2(keras.regularizers.Regularizer):
    """TF-slim's `l2_regularizer(weight_decay)`: `weight_decay * sum(w**2) / 2` (`tf.nn.l2_loss` has the
    half; Keras' `L2(l)` is `l * sum(w**2)`). The factor multiplies as a Python float, in the variable's
    dtype: Keras' `L2` casts it through a float32 tensor on tensorflow (0.00025 becomes
    0.0002500000119), a 5e-8 relative error that the float64 parity checks see."""

    def __init__(self, weight_decay: float):
        self.weight_decay = float(weight_decay)

    def __call__(self, x):
        return ops.sum(ops.square(x)) * (0.5 * self.weight_decay)

    def get_config(self):
        return {"weight_decay": self.weight_decay}


def with_regularization(loss, regularization):
    """`loss` plus the model's weight regularizers (`model.losses`, as `fit` adds them)."""
    return loss + ops.sum(ops.stack(regularization)) if regularization else loss


def value_and_grad_fn(model: keras.Model, loss_fn, training: bool = True):
    """`f(x, y) -> (loss, grads)`, `grads` aligned with `model.trainable_variables` (backend tensors); the
    loss includes the weight regularizers (`set_weight_decay`), as `fit`'s does.
    Build it once and call it for every step: on jax the forward+backward is traced and compiled once
    (op-by-op eager differentiation is several times slower)."""
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def step(x, y):
            with tf.GradientTape() as tape:
                loss = with_regularization(loss_fn(model(x, training=training), y), model.losses)
            return loss, tape.gradient(loss, variables)

    elif backend == "jax":
        import jax

        state = model.non_trainable_variables

        def compute(trainable_values, state_values, x, y):
            out, new_state, losses = model.stateless_call(trainable_values, state_values, x, training=training,
                                                          return_losses=True)
            return with_regularization(loss_fn(out, y), losses), new_state

        compiled = jax.jit(jax.value_and_grad(compute, has_aux=True))

        def step(x, y):
            (loss, new_state), grads = compiled([v.value for v in variables], [v.value for v in state], x, y)
            for variable, value in zip(state, new_state):
                variable.assign(value)
            return loss, grads

    elif backend == "torch":

        def step(x, y):
            for variable in variables:
                variable.value.grad = None
            loss = with_regularization(loss_fn(model(x, training=training), y), model.losses)
            loss.backward()
            return loss, [variable.value.grad for variable in variables]

    else:
        raise NotImplementedError(f"no gradient rule for Keras backend {backend!r}")
    return step


def inference_fn(model: keras.Model):
    """`f(x) -> outputs` in eval mode, the model's state untouched. On jax the whole forward is traced and
    compiled as one program (`stateless_call` under `jax.jit`): calling the model eagerly compiles each op on its
    own, and for one call that is several times slower (densenet121 at 64x64: 15.3 s against 2.2 s); tensorflow
    and torch run it eagerly, which for one call is fastest."""
    if keras.backend.backend() != "jax":
        return lambda x: model(x, training=False)
    import jax

    compiled = jax.jit(lambda trainable, state, x: model.stateless_call(trainable, state, x, training=False)[0])
    return lambda x: compiled([v.value for v in model.trainable_variables],
                              [v.value for v in model.non_trainable_variables], x)


def apply_fn(optimizer: keras.optimizers.Optimizer, variables):
    """`apply(grads)`: one step of `optimizer` on `variables` (grads aligned with them), as `apply_gradients`.
    On jax the step is one compiled program (`stateless_apply` under `jax.jit`, the new values assigned back):
    applied eagerly, every op compiles once per variable shape (pspnet's SGD step: 135 programs, 4.7 s to compile
    on an empty cache), and so would the optimiser's zero slots, which numpy makes here."""
    if keras.backend.backend() != "jax":
        return lambda grads: optimizer.apply_gradients(zip(grads, variables))
    import jax

    from .common import initial_values_drawn_by_numpy

    with initial_values_drawn_by_numpy(0):  # the slots' zeros made by numpy, not one program per shape
        optimizer.build(variables)
    step = jax.jit(optimizer.stateless_apply)

    def apply(grads):
        new_values, new_state = step([v.value for v in optimizer.variables], list(grads),
                                     [v.value for v in variables])
        for variable, value in zip(variables, new_values):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, new_state):
            variable.assign(value)

    return apply


def value_and_grad(model: keras.Model, loss_fn, x, y, training: bool = True):
    """`(loss, grads)` for one batch; see `value_and_grad_fn` to compute many."""
    return value_and_grad_fn(model, loss_fn, training)(x, y)


def input_value_and_grad(fn, x: np.ndarray):
    """`(fn(x), dfn/dx)` as numpy for a scalar function of one array (a loss with respect to its inputs: the
    NT-Xent's gradient with respect to the projections), through the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        value = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(value)
            out = fn(value)
        grad = tape.gradient(out, value)
    elif backend == "jax":
        import jax

        out, grad = jax.value_and_grad(fn)(jax.numpy.asarray(x))
    elif backend == "torch":  # the tensors are torch's; keras_impl itself never imports torch
        value = ops.convert_to_tensor(x).requires_grad_(True)  # on Keras' device
        out = fn(value)
        out.backward()
        grad = value.grad
    else:
        raise NotImplementedError(f"no gradient rule for Keras backend {backend!r}")
    return float(ops.convert_to_numpy(out)), ops.convert_to_numpy(grad)


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
