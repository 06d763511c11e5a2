"""SimCLR of seed 003 (`simclr_ssl`, `simclr_sl`): the seed's own `SSL` / `SL` classes and `nt_xent` against
both twins and both frameworks' losses, the SSL-to-SL encoder transfer, and the loss's conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_impl
from parity_tests import seed_simclr as seed
from torch_impl.losses import nt_xent as torch_nt_xent
from torch_impl.weights import load_state_dict, state_dict_numpy
from twins_cli.parity import randomize_batchnorm, rel_err

SIZE = 32
SEEDS = {"simclr_ssl": seed.SSL, "simclr_sl": seed.SL}


def seed_module(name):
    torch.manual_seed(0)
    module = SEEDS[name]()
    randomize_batchnorm(module, 0)
    return module.eval()


def batch(seed_=0, size=SIZE):
    return np.random.RandomState(seed_).randn(4, 3, size, size).astype(np.float32)


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("name", list(SEEDS))
def test_the_seeds_state_dict_loads_strictly_and_computes_the_same(name):
    """Keys, shapes and order are the seed's (`enc.*`, `projector.0/2`, `linear`); its state_dict loads with
    strict=True and the twin computes what the seed's module computes, in eval and in training mode."""
    theirs = seed_module(name)
    ours = torch_impl.build(name)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.from_numpy(batch())
    for mode in (False, True):
        ours.train(mode), theirs.train(mode)
        with torch.no_grad():
            for a, b in zip(as_tuple(ours(x)), as_tuple(theirs(x))):
                assert torch.equal(a, b)
    feature, projection = torch_impl.build("simclr_ssl").eval()(x)
    assert feature.shape == (4, 512) and projection.shape == (4, 128)


@pytest.mark.keras
@pytest.mark.parametrize("name", list(SEEDS))
def test_the_seeds_state_dict_through_the_bridge_matches_on_this_backend(name):
    """The seed's weights in the Keras twin: `[feature, projection]` (or the logits) within 1e-5 relative of
    the seed module's, every variable carried (`enc-conv1` <-> `enc.conv1.weight`, ...)."""
    import keras

    import keras_impl
    from keras_impl.weights import load_torch_state_dict

    theirs = seed_module(name)
    model = keras_impl.build(name)
    report = load_torch_state_dict(model, theirs.state_dict(), strict=True)
    assert report.ok and not report.skipped
    x = batch(1)
    with torch.no_grad():
        expected = [t.numpy() for t in as_tuple(theirs(torch.from_numpy(x)))]
    got = [keras.ops.convert_to_numpy(t) for t in as_tuple(model(x.transpose(0, 2, 3, 1), training=False))]
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert rel_err(g, e) < 1e-5, rel_err(g, e)


@pytest.mark.keras
def test_an_ssl_encoder_starts_an_sl_model_in_both_frameworks():
    """Fine-tuning and the linear probe start from the SSL run's encoder: its `enc.*` load into simclr_sl, the
    projector is left out and the classifier stays fresh, the same keys skipped on both sides."""
    import keras_impl
    from keras_impl.weights import load_torch_state_dict, torch_state_dict

    torch.manual_seed(3)
    ssl = state_dict_numpy(torch_impl.build("simclr_ssl"))
    projector = sorted(k for k in ssl if k.startswith("projector."))
    sl = torch_impl.build("simclr_sl")
    fresh = state_dict_numpy(sl)["linear.weight"]
    with pytest.raises(Exception, match=r"missing keys (.|\n)*linear\.weight(.|\n)*unexpected keys (.|\n)*projector"):
        load_state_dict(sl, ssl)
    report = load_state_dict(sl, ssl, exclude=("projector", "linear"))
    assert sorted(report.skipped) == sorted(projector + ["linear.weight", "linear.bias"])
    after = state_dict_numpy(sl)
    assert all(np.array_equal(after[k], v) for k, v in ssl.items() if k.startswith("enc."))
    assert np.array_equal(after["linear.weight"], fresh)
    kmodel = keras_impl.build("simclr_sl")
    kfresh = torch_state_dict(kmodel)["linear.weight"]
    kreport = load_torch_state_dict(kmodel, ssl, exclude=("projector", "linear"))
    assert sorted(kreport.skipped) == sorted(report.skipped)
    kafter = torch_state_dict(kmodel)
    assert all(np.array_equal(kafter[k], v) for k, v in ssl.items()
               if k.startswith("enc.") and not k.endswith("num_batches_tracked"))
    assert np.array_equal(kafter["linear.weight"], kfresh)


# ------------------------------------------------------------------------------------------------ NT-Xent


def projections(rows=8, dim=16, seed_=0, dtype=np.float64):
    """Interleaved pairs: rows 2k and 2k+1 close to each other, the rest spread (some pairs at negative
    cosine similarity, which the seed's clamp lifts)."""
    rng = np.random.RandomState(seed_)
    anchors = rng.randn(rows // 2, dim)
    return (np.repeat(anchors, 2, axis=0) + 0.3 * rng.randn(rows, dim)).astype(dtype)


@pytest.mark.keras
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nt_xent_is_the_seeds_in_both_frameworks(dtype, monkeypatch):
    """The seed's `nt_xent`, `torch_impl.losses.nt_xent` and `keras_impl.losses.nt_xent` (and the `NTXent`
    loss `fit` uses) on the same projections agree within 1e-5; so do the gradients with respect to the
    projections (Keras' through the backend's own autodiff)."""
    import keras

    from keras_impl.losses import NTXent, nt_xent
    from keras_impl.training import input_value_and_grad

    z = projections(dtype=dtype)
    reference = seed.nt_xent(torch.from_numpy(z)).item()
    zt = torch.from_numpy(z).requires_grad_(True)
    ours = torch_nt_xent(zt)
    ours.backward()
    keras_loss, keras_grad = input_value_and_grad(nt_xent, z)
    fit_loss = float(keras.ops.convert_to_numpy(NTXent()(np.zeros(len(z)), z)))
    for value in (ours.item(), keras_loss, fit_loss):
        assert abs(value - reference) < 1e-5 * abs(reference), (value, reference)
    assert rel_err(keras_grad, zt.grad.numpy()) < 1e-5
    # The comparison catches a Keras loss without the seed's clamp (the negative similarities kept).
    monkeypatch.setattr("keras_impl.losses.SIMILARITY_FLOOR", -1.0)
    broken_loss, broken_grad = input_value_and_grad(nt_xent, z)
    assert abs(broken_loss - reference) > 1e-5 * abs(reference) and rel_err(broken_grad, zt.grad.numpy()) > 1e-5


def test_the_seeds_clamp_and_pairing_are_what_the_loss_computes():
    """Written out row by row: l_i = -log(exp(s_i,p(i) / t) / sum_{k != i} exp(s_ik / t)) with s clamped at
    1e-7 and p(2k) = 2k+1; the mean over the 2N rows. Without the clamp, or with the pairs as the seed's prose
    describes them (first N rows one view, last N the other), the value differs."""
    z = projections(rows=6, dim=5, seed_=2)
    x = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = np.maximum(x @ x.T, 1e-7) / 0.5

    def by_hand(sim, pair):
        rows = []
        for i in range(len(sim)):
            others = [k for k in range(len(sim)) if k != i]
            rows.append(-(sim[i, pair(i)] - np.log(np.sum(np.exp(sim[i, others])))))
        return float(np.mean(rows))

    interleaved = by_hand(s, lambda i: i ^ 1)
    value = torch_nt_xent(torch.from_numpy(z)).item()
    assert value == pytest.approx(interleaved, rel=1e-12)
    assert (x @ x.T).min() < 0  # there are negative similarities for the clamp to lift
    assert by_hand((x @ x.T) / 0.5, lambda i: i ^ 1) != pytest.approx(value, rel=1e-6)
    assert by_hand(s, lambda i: (i + 3) % 6) != pytest.approx(value, rel=1e-6)


@pytest.mark.keras
def test_nt_xent_refuses_an_odd_batch_and_a_map():
    from keras_impl.losses import nt_xent

    for loss in (torch_nt_xent, nt_xent):
        z = projections()
        with pytest.raises(ValueError, match=r"even number of rows.*got 7"):
            loss(torch.from_numpy(z[:7]) if loss is torch_nt_xent else z[:7])
        with pytest.raises(ValueError, match=r"\(2N, D\), got \(8, 4, 4\)"):
            loss(torch.zeros(8, 4, 4) if loss is torch_nt_xent else np.zeros((8, 4, 4)))


@pytest.mark.keras
@pytest.mark.parametrize("name", list(SEEDS))
def test_both_twins_refuse_a_wrong_layout_and_a_too_small_image(name):
    """The contract tests' input errors for the two SimCLR twins (not in test_contract.py's MODELS): the other
    layout with a hint, and an image below the 8 px the CIFAR encoder takes (layer4 at 1x1)."""
    import keras_impl

    tmodel, kmodel = torch_impl.build(name), keras_impl.build(name)
    with pytest.raises(ValueError, match=r"NCHW.*got shape \(2, 32, 32, 3\).*NHWC"):
        tmodel(torch.randn(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"NHWC input with 3 channels.*got shape \(2, 3, 32, 32\).*looks like NCHW"):
        kmodel(np.zeros((2, 3, 32, 32), "float32"))
    with pytest.raises(ValueError, match=rf"{name}.*at least 8"):
        tmodel(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=rf"{name}.*at least 8"):
        kmodel(np.zeros((2, 4, 4, 3), "float32"))
