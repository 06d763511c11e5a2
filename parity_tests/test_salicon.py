"""The saliency seed's data and metrics, framework-free (`twins.data`, `twins.metrics`, `twins.shapes`): the
SALICON layout and its errors, the joint image / map augmentation (one draw moves both), and CC, KLD and
SIM against their definitions."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from twins import metrics
from twins.data import (BatchPlan, DataError, Salicon, read_mask, salicon_train_transform, salicon_val_transform)
from twins.shapes import make_salicon


@pytest.fixture(scope="module")
def salicon(tmp_path_factory):
    return make_salicon(tmp_path_factory.mktemp("salicon"), train=6, val=3, size=32, seed=2)


def test_the_salicon_layout_pairs_each_image_with_its_map(salicon):
    train = Salicon(salicon, "train")
    assert len(train) == 6 and train.classes == []
    image_path, mask_path = train.samples[0]
    assert mask_path == salicon / "mask" / "train" / f"{image_path.stem}.png"
    x, y = BatchPlan(train, 4, salicon_train_transform(64), shuffle=True, seed=0).batch(0, 0)
    assert x.shape == (4, 64, 64, 3) and y.shape == (4, 64, 64, 1)
    assert x.dtype == y.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() <= 1


def test_salicon_errors_name_the_file_or_folder(salicon, tmp_path):
    with pytest.raises(DataError, match=r"no 'test' images: expected .*image/test/<name>.jpg"):
        Salicon(salicon, "test")
    broken = tmp_path / "broken"
    for split in ("image/train", "mask/train"):
        (broken / split).mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(broken / "image" / "train" / f"{name}.jpg"), np.zeros((8, 10, 3), np.uint8))
    cv2.imwrite(str(broken / "mask" / "train" / "a.png"), np.zeros((8, 10), np.uint8))
    with pytest.raises(DataError, match=r"missing saliency map for 1 of 2 images .*mask/train/b.png"):
        Salicon(broken, "train")
    cv2.imwrite(str(broken / "mask" / "train" / "b.png"), np.zeros((10, 8), np.uint8))
    pairs = Salicon(broken, "train")
    with pytest.raises(DataError, match=r"b.png is 8x10, its image .*b.jpg is 10x8: a saliency map must have"):
        pairs.example(1, salicon_val_transform(32), None)
    (broken / "mask" / "train" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"unreadable saliency map: .*a.png"):
        pairs.example(0, salicon_val_transform(32), None)


def test_a_colour_map_is_read_as_the_seed_reads_it(tmp_path):
    """The seed: `cv2.imread` (BGR) then `COLOR_BGR2GRAY`."""
    colour = np.random.RandomState(0).randint(0, 256, (6, 7, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), colour)
    assert np.array_equal(read_mask(tmp_path / "m.png"), cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))


def test_one_random_draw_moves_image_and_map_together():
    """A map drawn as its image's own red channel stays equal to it through every crop, flip and rotation
    the training transform draws; the draws are reproducible from the generator."""
    rng = np.random.RandomState(1)
    image = cv2.GaussianBlur(rng.randint(0, 256, (48, 60, 3)).astype(np.uint8), (5, 5), 0)
    image[10:20, 5:15] = 255  # an asymmetric bright patch, so a flip or rotation shows
    transform = salicon_train_transform(32)
    seen = set()
    for seed in range(40):
        x, y = transform(image, image[..., 0].copy(), np.random.default_rng(seed))
        assert x.shape == (32, 32, 3) and y.shape == (32, 32, 1)
        assert np.abs(x[..., 0] - y[..., 0]).max() < 1e-6, seed
        again = transform(image, image[..., 0].copy(), np.random.default_rng(seed))
        assert np.array_equal(again[0], x)
        seen.add(x.tobytes())
    assert len(seen) > 20  # the draws differ (about one in eight is the plain resize, as often the flip alone)
    plain = salicon_val_transform(32)(image, image[..., 0])[0]
    assert np.array_equal(plain, cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255)


def test_the_generated_maps_peak_on_the_bright_blob(salicon):
    image = cv2.imread(str(salicon / "image" / "val" / "val_00000.jpg"))
    saliency = read_mask(salicon / "mask" / "val" / "val_00000.png")
    assert image.shape[:2] == saliency.shape == (32, 42) and saliency.max() == 255
    y, x = np.unravel_index(saliency.argmax(), saliency.shape)
    assert image[y, x].max() > 190 and np.median(image) < 90


def reference_scores(p, g) -> dict:
    """CC, KLD and SIM of two maps written out pixel by pixel from the benchmark's definitions (CC.m,
    KLdiv.m, similarity.m), to compare the vectorised versions with."""
    p, g = [float(v) for v in p.ravel()], [float(v) for v in g.ravel()]
    n = len(p)
    mp, mg = sum(p) / n, sum(g) / n
    cov = sum((a - mp) * (b - mg) for a, b in zip(p, g))
    cc = cov / math.sqrt(sum((a - mp) ** 2 for a in p) * sum((b - mg) ** 2 for b in g))
    eps = 2.220446049250313e-16
    sp, sg = sum(p), sum(g)
    kld = sum((b / sg) * math.log(eps + (b / sg) / ((a / sp) + eps)) for a, b in zip(p, g))

    def unit(m):
        low, high = min(m), max(m)
        m = [(v - low) / (high - low) for v in m]
        return [v / sum(m) for v in m]

    sim = sum(min(a, b) for a, b in zip(unit(p), unit(g)))
    return {"cc": cc, "kld": kld, "sim": sim}


def test_saliency_metrics_follow_their_definitions():
    rng = np.random.RandomState(3)
    pred, target = rng.rand(3, 5, 6), rng.rand(3, 5, 6) ** 3
    scores = metrics.saliency_scores(pred[..., None], target[:, None])  # NHWC and NCHW maps are both read
    for i in range(3):
        expected = reference_scores(pred[i], target[i])
        for key in ("cc", "kld", "sim"):
            assert scores[key][i] == pytest.approx(expected[key], rel=1e-12), key
        assert scores["loss"][i] == pytest.approx(((pred[i] - target[i]) ** 2).mean())
    same = metrics.saliency_scores(target, target)
    assert np.allclose(same["cc"], 1) and np.allclose(same["kld"], 0, atol=1e-12) and np.allclose(same["sim"], 1)
    assert np.allclose(metrics.correlation_coefficient(3 * target + 1, target), 1)  # scale and shift do not count
    assert np.allclose(metrics.correlation_coefficient(-target, target), -1)
    left, right = np.zeros((1, 4, 4)), np.zeros((1, 4, 4))
    left[0, :, :2], right[0, :, 2:] = 1, 1
    assert metrics.similarity(left, right)[0] == 0 and metrics.kl_divergence(left, right)[0] > 30
    flat = np.full((1, 4, 4), 0.5)  # a constant prediction carries no information
    assert metrics.correlation_coefficient(flat, target[:1, :4, :4])[0] == 0.0
    assert np.isfinite(metrics.similarity(flat, target[:1, :4, :4])).all()
    with pytest.raises(ValueError, match=r"differ in shape"):
        metrics.saliency_scores(pred, target[:, :4])
    with pytest.raises(ValueError, match=r"single-channel maps"):
        metrics.saliency_scores(rng.rand(2, 4, 4, 3), rng.rand(2, 4, 4, 3))
