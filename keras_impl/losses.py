"""The contrastive loss of seed 003 (SimCLR), NT-Xent, and seed 004's (PSPNet) cross-entropy with an ignore
label, in keras.ops (every backend). Twin of `torch_impl/losses.py`, whose docstring states NT-Xent's
definition and its conventions against the paper's.

`nt_xent(z, temperature)` is a function of the projection batch alone; `NTXent` is the same loss as a
`keras.losses.Loss` for `compile`/`fit` (it ignores `y_true`: the targets are the rows' pairing), so a
contrastive recipe is a loss on the model's projection output, not a backend-specific `train_step`.
"""
from __future__ import annotations

import keras
from keras import ops

from twins.registry import IGNORE_LABEL

DIAGONAL_MASK = 1e5
SIMILARITY_FLOOR = 1e-7
NORM_EPSILON = 1e-12  # F.normalize's eps: x / max(||x||, eps)


def pair_targets(rows):
    """Row 2k's positive is 2k+1 and the reverse: `[1, 0, 3, 2, ...]`. `rows` may be a tensor (tensorflow traces
    `fit` with the batch dimension unknown)."""
    if isinstance(rows, int) and rows % 2:
        raise ValueError(f"nt_xent needs an even number of rows (two interleaved views per sample), got {rows}")
    index = ops.arange(rows, dtype="int32")
    return index + 1 - 2 * (index % 2)


def nt_xent_rows(z, temperature=0.5):
    """The per-row cross-entropies (2N values) whose mean is `nt_xent`."""
    if len(z.shape) != 2:
        raise ValueError(f"nt_xent expects projections of shape (2N, D), got {tuple(z.shape)}")
    rows = z.shape[0] if z.shape[0] is not None else ops.shape(z)[0]
    norm = ops.sqrt(ops.sum(ops.square(z), axis=1, keepdims=True))
    x = z / ops.maximum(norm, NORM_EPSILON)
    scores = ops.maximum(ops.matmul(x, ops.transpose(x)), SIMILARITY_FLOOR) / temperature
    index = ops.arange(rows, dtype="int32")
    diagonal = ops.cast(ops.equal(ops.expand_dims(index, 1), ops.expand_dims(index, 0)), scores.dtype)
    scores = scores - diagonal * DIAGONAL_MASK
    log_p = ops.log_softmax(scores, axis=1)
    targets = ops.expand_dims(pair_targets(rows), 1)
    return -ops.squeeze(ops.take_along_axis(log_p, targets, axis=1), 1)


def nt_xent(z, temperature=0.5):
    """The seed's NT-Xent of interleaved projections `z` (2N, D): a scalar, the mean over the 2N rows."""
    return ops.mean(nt_xent_rows(z, temperature))


@keras.saving.register_keras_serializable(package="twins")
class NTXent(keras.losses.Loss):
    """`nt_xent` as a Keras loss on the projection output: per-row values, averaged by the default
    `sum_over_batch_size` reduction into the seed's mean. `y_true` is not read (pass zeros)."""

    def __init__(self, temperature=0.5, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        return nt_xent_rows(y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}



def segmentation_cross_entropy(logits, labels, ignore_index=IGNORE_LABEL):
    """Twin of `torch_impl.losses.segmentation_cross_entropy`: the mean cross-entropy over the pixels whose
    label is not `ignore_index` (NHWC logits, NHW labels), 0 when none is. Keras'
    `SparseCategoricalCrossentropy(ignore_class=255)` would be the built-in way; written out here so that the
    all-ignored batch is defined the same way on both sides and the ignored pixels' dummy class (0) is
    visibly masked before it reaches the mean."""
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, ignore_index)
    per_pixel = keras.losses.sparse_categorical_crossentropy(ops.where(valid, labels, 0), logits, from_logits=True)
    weight = ops.cast(valid, per_pixel.dtype)
    return ops.sum(per_pixel * weight) / ops.maximum(ops.sum(weight), ops.cast(1, per_pixel.dtype))


@keras.saving.register_keras_serializable(package="twins")
class SegmentationCrossEntropy(keras.losses.Loss):
    """`segmentation_cross_entropy` as a Keras loss for `compile`: it returns the batch's scalar, which the
    default reduction leaves as it is (a mean over one value). Keras hands `y_true` over as floats; 0..255
    are exact in float32, so the cast back to class indices is lossless."""

    def __init__(self, ignore_index=IGNORE_LABEL, name="segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = ignore_index

    def call(self, y_true, y_pred):
        return segmentation_cross_entropy(y_pred, y_true, self.ignore_index)

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index}
