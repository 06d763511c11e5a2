"""The losses that are not a plain cross-entropy or MSE: seed 003's (SimCLR) NT-Xent and seed 004's (PSPNet)
cross-entropy with an ignore label. Twin of `keras_impl/losses.py`.

`nt_xent(z, temperature)` is the seed's definition exactly: the rows of `z` (2N projections, interleaved so
that rows 2k and 2k+1 are the two views of sample k) are L2-normalised (`F.normalize`, eps 1e-12); their
cosine similarities are clamped to at least 1e-7 and divided by the temperature; the diagonal (each row
with itself) gets 1e5 subtracted, so it drops out of the softmax; each row's target is its pair's column
(2k -> 2k+1, 2k+1 -> 2k); the loss is the mean cross-entropy over the 2N rows.

Conventions against the paper and its official code:
- Mean over 2N rows: the paper's L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)], the same number. The
  official TensorFlow code adds the two directions' means over N (`loss_a + loss_b`), twice this value;
  the gradients scale with it, so an optimiser tuned on one convention needs twice (SGD) or the same
  (Adam, scale-free) learning rate on the other.
- The clamp: the paper's similarities lie in [-1, 1]; the seed's clamp lifts every negative one to 1e-7,
  so a negative pair that is already dissimilar contributes a constant term and no gradient. Kept (it
  is the seed's loss); `parity_tests/test_simclr.py` shows it against the unclamped form.
- The temperature 0.5 is the paper's CIFAR-10 setting; the diagonal mask (1e5 after the division) is
  exp(-1e5 + 2) = 0 in float32 and float64 alike.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from twins.registry import IGNORE_LABEL

DIAGONAL_MASK = 1e5
SIMILARITY_FLOOR = 1e-7


def pair_targets(rows: int, device=None) -> torch.Tensor:
    """Row 2k's positive is 2k+1 and the reverse: `[1, 0, 3, 2, ...]`."""
    if rows % 2:
        raise ValueError(f"nt_xent needs an even number of rows (two interleaved views per sample), got {rows}")
    return torch.arange(rows, device=device) ^ 1


def nt_xent_rows(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The per-row cross-entropies (2N values) whose mean is `nt_xent`."""
    if z.ndim != 2:
        raise ValueError(f"nt_xent expects projections of shape (2N, D), got {tuple(z.shape)}")
    x = F.normalize(z, dim=1)
    scores = (x @ x.t()).clamp(min=SIMILARITY_FLOOR) / temperature
    scores = scores - torch.eye(scores.shape[0], dtype=scores.dtype, device=scores.device) * DIAGONAL_MASK
    return F.cross_entropy(scores, pair_targets(z.shape[0], z.device), reduction="none")


def nt_xent(z: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The seed's NT-Xent of interleaved projections `z` (2N, D): a scalar, the mean over the 2N rows."""
    return nt_xent_rows(z, temperature).mean()



def segmentation_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL):
    """PSPNet's criterion, `CrossEntropyLoss(ignore_index=255)`: the mean cross-entropy over the pixels whose
    label is not `ignore_index` (NCHW logits, NHW labels). With no pixel labelled torch's mean is 0 / 0 = NaN,
    which would poison the weights at the next step; here it is 0, with zero gradients."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)
