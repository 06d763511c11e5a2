"""Classification metrics in numpy, the same function for both frameworks' logits."""
from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy of (N, C) logits against (N,) class indices."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= logits.shape[-1]:
        raise ValueError(f"label out of range: labels span [{labels.min()}, {labels.max()}] for "
                         f"{logits.shape[-1]} classes")
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def correct(logits: np.ndarray, labels: np.ndarray) -> int:
    """How many argmax predictions equal the labels."""
    return int((np.asarray(logits).argmax(axis=-1) == np.asarray(labels)).sum())


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(indices, probabilities)` of the k most probable classes per row, most probable first."""
    probs = softmax(logits)
    k = min(k, probs.shape[-1])
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=-1)
