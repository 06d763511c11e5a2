"""Metrics in numpy, the same functions for both frameworks' outputs: classification (cross-entropy, accuracy,
top-k), saliency maps (MSE, CC, KLD, SIM), the kNN monitor of representations, and semantic segmentation
(confusion matrix, IoU per class, mIoU, pixel accuracy, cross-entropy with an ignore label)."""
from __future__ import annotations

import numpy as np

from twins.registry import IGNORE_LABEL


# ----------------------------------------------------------------------------------------------
# The parity metric (DESIGN.md "Parity"), for the twins' comparisons and the exported artifacts'


def abs_err(a, b) -> float:
    """`max|a - b|`, the bit-exact checks' metric, in float64; `inf` for a NaN or an infinity on either side.

    One float64 difference and its maximum, no other full-size temporary: a NaN or an infinity on either side
    leaves a NaN or an infinity in the difference, and so in its maximum (the parity checks compare whole
    models with it, pspnet's 49 M parameters a step: 7 s a training check with separate finiteness scans)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if not b.size:
        return 0.0
    diff = np.atleast_1d(np.subtract(a, b, dtype=np.float64))  # a 0-d difference is a numpy scalar, not an array
    err = float(np.abs(diff, out=diff).max())
    return err if np.isfinite(err) else float("inf")


def rel_err(a, b, floor: float = 1e-6) -> float:
    """`max|a - b| / max(max|b|, floor)`; `inf` when either side holds a NaN or an infinity."""
    err = abs_err(a, b)
    if err == 0.0 or err == float("inf"):
        return err
    b = np.asarray(b)
    return err / max(float(b.max()), -float(b.min()), floor)


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


# ----------------------------------------------------------------------------------------------
# Saliency maps (seed 000): the standard metrics of the MIT / SALICON benchmarks (Bylinskii et al., "What
# do different evaluation metrics tell us about saliency models?", 2018), per image, on (N, H, W) maps.

# MATLAB's `eps`, which the benchmark's KLdiv.m adds inside the log and to the denominator.
KLD_EPS = float(np.finfo(np.float64).eps)


def _as_maps(maps: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) float64 from (N, H, W) or (N, H, W, 1) / (N, 1, H, W) single-channel maps."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    elif maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"{what}: expected single-channel maps (N, H, W), got shape {maps.shape}")
    return maps


def _per_image(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(maps.shape[0], -1)


def _sum_normalised(flat: np.ndarray) -> np.ndarray:
    """Each row as a distribution (sum 1); a row that sums to 0 (an empty map) becomes uniform."""
    flat = np.clip(flat, 0.0, None)
    total = flat.sum(axis=1, keepdims=True)
    return np.where(total > 0, flat / np.where(total > 0, total, 1.0), 1.0 / flat.shape[1])


def correlation_coefficient(pred, target) -> np.ndarray:
    """CC per image: Pearson's correlation of the two maps (1 identical up to scale and shift, 0 unrelated,
    -1 inverted). A constant map carries no information: its CC is 0 (the benchmark's code gives NaN)."""
    p, g = _per_image(_as_maps(pred, "pred")), _per_image(_as_maps(target, "target"))
    p, g = p - p.mean(axis=1, keepdims=True), g - g.mean(axis=1, keepdims=True)
    norm = np.sqrt((p ** 2).sum(axis=1) * (g ** 2).sum(axis=1))
    return np.where(norm > 0, (p * g).sum(axis=1) / np.where(norm > 0, norm, 1.0), 0.0)


def kl_divergence(pred, target) -> np.ndarray:
    """KLD per image: `sum G log(eps + G / (P + eps))` with both maps normalised to sum 1 (the benchmark's
    KLdiv.m; 0 for identical maps, larger is worse). An all-zero map counts as uniform."""
    p, g = _sum_normalised(_per_image(_as_maps(pred, "pred"))), _sum_normalised(_per_image(_as_maps(target, "target")))
    return (g * np.log(KLD_EPS + g / (p + KLD_EPS))).sum(axis=1)


def similarity(pred, target) -> np.ndarray:
    """SIM per image: `sum min(P, G)` of the maps min-max normalised, then normalised to sum 1 (the
    benchmark's similarity.m; 1 identical, 0 disjoint). A constant map counts as uniform."""
    def normalise(flat):
        low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
        span = high - low
        return _sum_normalised(np.where(span > 0, (flat - low) / np.where(span > 0, span, 1.0), 0.0))

    p, g = normalise(_per_image(_as_maps(pred, "pred"))), normalise(_per_image(_as_maps(target, "target")))
    return np.minimum(p, g).sum(axis=1)


def mean_squared_error(pred, target) -> np.ndarray:
    """MSE per image (the recipe's loss, `nn.MSELoss()` of one image)."""
    p, g = _per_image(_as_maps(pred, "pred")), _per_image(_as_maps(target, "target"))
    return ((p - g) ** 2).mean(axis=1)


def saliency_scores(pred, target) -> dict[str, np.ndarray]:
    """`{"loss": MSE, "cc", "kld", "sim"}`, one value per image."""
    pred, target = _as_maps(pred, "pred"), _as_maps(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"predicted maps {pred.shape} and target maps {target.shape} differ in shape")
    return {"loss": mean_squared_error(pred, target), "cc": correlation_coefficient(pred, target),
            "kld": kl_divergence(pred, target), "sim": similarity(pred, target)}


# ----------------------------------------------------------------------------------------------
# Representations (seed 003): the weighted k-nearest-neighbour monitor of self-supervised training (Wu et al.,
# "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", 2018, section 3.4; the kNN monitor
# of the MoCo / SimCLR CIFAR-10 reproductions): a query votes with its k most similar memory features, each
# weighted by exp(similarity / t), similarity being the cosine of the two features.


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (torch's `F.normalize`, with its floor of 1e-12 on the norm)."""
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_predict(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, classes: int, k: int = 200,
                t: float = 0.1, chunk: int = 256) -> np.ndarray:
    """The class each query row gets from the weighted vote of its `k` nearest memory rows (cosine similarity;
    fewer when the memory is smaller): `argmax_c sum_{i in top-k} exp(s_i / t) [label_i == c]`. Ties between
    similarities go to the earlier memory row, between classes to the lower class index. Queries are scored
    `chunk` rows at a time (10000 x 50000 similarities would be 4 GB)."""
    memory_labels = np.asarray(memory_labels, np.int64)
    if memory.ndim != 2 or queries.ndim != 2 or memory.shape[1] != queries.shape[1]:
        raise ValueError(f"kNN needs (N, D) memory and (M, D) query features, got {memory.shape} and {queries.shape}")
    if len(memory_labels) != len(memory):
        raise ValueError(f"{len(memory)} memory features but {len(memory_labels)} labels")
    if memory_labels.min(initial=0) < 0 or memory_labels.max(initial=0) >= classes:
        raise ValueError(f"label out of range: memory labels span [{memory_labels.min()}, {memory_labels.max()}] "
                         f"for {classes} classes")
    if k < 1 or not t > 0:
        raise ValueError(f"kNN needs k >= 1 and t > 0, got k={k}, t={t}")
    memory, queries = l2_normalize(memory), l2_normalize(queries)
    k = min(k, len(memory))
    predicted = []
    for start in range(0, len(queries), chunk):
        similarity = queries[start:start + chunk] @ memory.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / t)
        votes = np.zeros((len(nearest), classes))
        np.add.at(votes, (np.arange(len(nearest))[:, None], memory_labels[nearest]), weights)
        predicted.append(votes.argmax(axis=1))
    return np.concatenate(predicted) if predicted else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------
# Semantic segmentation (seed 004): a confusion matrix accumulated over a whole phase, then IoU per class, mIoU
# and pixel accuracy from it. Pixels labelled `ignore` (VOC's outline band, padding) count nowhere.


def confusion_matrix(pred: np.ndarray, target: np.ndarray, classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """(classes, classes) int64 pixel counts, row = target class, column = predicted class, over the pixels
    whose target is not `ignore`. Summing the matrices of batches gives the matrix of their union, which is
    why a phase accumulates this rather than a per-batch mIoU."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {pred.shape} and targets {target.shape} differ in shape")
    valid = target != ignore
    t, p = target[valid].astype(np.int64), pred[valid].astype(np.int64)
    for what, values in (("target", t), ("prediction", p)):
        bad = (values < 0) | (values >= classes)
        if bad.any():
            raise ValueError(f"{what} value {values[np.argmax(bad)]} is out of range 0..{classes - 1} "
                             f"(and not the ignore label {ignore})")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def segmentation_scores(conf: np.ndarray) -> dict:
    """`{"miou", "acc", "iou", "pixels"}` of a confusion matrix (`confusion_matrix`'s layout).

    IoU of class c = TP / (TP + FP + FN); `iou` holds it per class, NaN for a class absent from both target
    and prediction (its IoU is 0 / 0: undefined, not 0). mIoU is the mean over the classes whose union is
    non-empty. semseg's `intersectionAndUnion` adds 1e-10 to each union and averages every class, so an
    absent class enters as IoU 0 and pulls the mean down by a class the images never showed; over the full
    VOC val set every class is present and the two agree, but on a subset or a small batch they do not.
    Pixel accuracy = correctly labelled pixels / scored pixels. With no scored pixel (all ignored) both are
    defined as 0.0 and `pixels` says 0, so a caller can tell "nothing scored" from "everything wrong"."""
    conf = np.asarray(conf, np.int64)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    present = union > 0
    iou = np.full(len(conf), np.nan)
    iou[present] = tp[present] / union[present]
    pixels = int(conf.sum())
    return {"miou": float(iou[present].mean()) if present.any() else 0.0,
            "acc": float(tp.sum() / pixels) if pixels else 0.0, "iou": iou, "pixels": pixels}


def segmentation_cross_entropy(logits_nhwc: np.ndarray, labels_nhw: np.ndarray,
                               ignore: int = IGNORE_LABEL) -> tuple[float, int]:
    """`(sum of the softmax cross-entropy over the pixels whose label is not `ignore`, their count)`, float64:
    torch's `CrossEntropyLoss(ignore_index=255)` is sum / count of one batch; a phase sums both over its
    batches so its loss is the mean over all its scored pixels, not a mean of batch means."""
    logits, labels = np.asarray(logits_nhwc), np.asarray(labels_nhw)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} (N, H, W, C) and labels {labels.shape} (N, H, W) differ in size")
    valid = labels != ignore
    scored = labels[valid].astype(np.int64)
    bad = (scored < 0) | (scored >= logits.shape[-1])
    if bad.any():
        raise ValueError(f"label out of range: value {scored[np.argmax(bad)]} for {logits.shape[-1]} classes "
                         f"(and not the ignore label {ignore})")
    if not scored.size:
        return 0.0, 0
    log_probs = log_softmax(logits[valid])
    return float(-log_probs[np.arange(len(scored)), scored].sum()), int(scored.size)
