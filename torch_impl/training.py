"""Loss, gradients and the optimiser for torch twins. Twin of `keras_impl/training.py`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import nt_xent, segmentation_cross_entropy


def with_aux(loss, outputs, labels, aux_weight: float = 0.4):
    """`loss(logits) + aux_weight * loss(aux)` per auxiliary head when `outputs` is `(logits, aux, ...)` (a twin
    in training mode with aux heads: inception, pspnet), else `loss(outputs)`: the seeds' aux recipe, once for
    every per-output loss."""
    if isinstance(outputs, (tuple, list)):
        main, *aux = outputs
        return loss(main, labels) + sum(aux_weight * loss(a, labels) for a in aux)
    return loss(outputs, labels)


def cross_entropy(outputs, labels, aux_weight: float = 0.4):
    """Mean softmax cross-entropy over the class axis (dim 1, NCHW); `labels` are class indices shaped
    like the logits without that axis. A `(logits, aux, ...)` tuple (inception in training mode) gives
    CE(logits) + aux_weight * CE(aux) per auxiliary head, the seed's recipe."""
    return with_aux(F.cross_entropy, outputs, labels, aux_weight)


def mean_squared_error(outputs, targets):
    """Mean of the squared differences over every element (the saliency recipe's `nn.MSELoss()`); targets
    are maps shaped like the outputs (NCHW)."""
    return F.mse_loss(outputs, targets)


def segmentation_loss(outputs, labels, aux_weight: float = 0.4):
    """PSPNet's training loss: `main + aux_weight * aux`, each the cross-entropy over the labelled pixels
    (255 ignored); `outputs` is `(logits, aux_logits)` (training mode) or the logits alone."""
    return with_aux(segmentation_cross_entropy, outputs, labels, aux_weight)


def loss_for(task: str, aux_weight: float = 0.4, temperature: float = 0.5):
    """The training loss of a registry task: "classification" cross-entropy (with aux heads), "saliency" MSE,
    "contrastive" the seed's NT-Xent of the projections (the second output; the labels are not read),
    "segmentation" PSPNet's main + aux cross-entropy ignoring 255.
    Twin of `keras_impl.training.loss_for`."""
    if task == "classification":
        return lambda outputs, labels: cross_entropy(outputs, labels, aux_weight)
    if task == "saliency":
        return mean_squared_error
    if task == "contrastive":
        return lambda outputs, labels: nt_xent(outputs[1], temperature)
    if task == "segmentation":
        return lambda outputs, labels: segmentation_loss(outputs, labels, aux_weight)
    raise ValueError(f"no training loss for task {task!r}")


def adam(parameters, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Adam:
    """Twin of `keras_impl.training.adam`: torch's Adam, `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t)
    + eps)`."""
    return torch.optim.Adam(parameters, lr=learning_rate, betas=tuple(betas), eps=eps)


def sgd(parameters, learning_rate: float, momentum: float = 0.0) -> torch.optim.SGD:
    """Twin of `keras_impl.training.sgd`: `b = momentum * b + g; p -= lr * b` (TF1's `MomentumOptimizer`,
    the seeds' optimiser, has the same form)."""
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=momentum)


def value_and_grad(model: nn.Module, loss_fn, x, y, training: bool = True):
    """`(loss, grads)` with `grads` keyed by parameter name (None where no gradient reached it)."""
    model.train(training)
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, x, y) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss, _ = value_and_grad(model, loss_fn, x, y, training=True)
    optimizer.step()
    return float(loss.detach())
