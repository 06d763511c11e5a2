"""PSPNet of seed 004 (`pspnet`): the seed's own `PSPNet` against both twins (keys, eval outputs, the training
mode's main and aux losses), the ignore label on both sides (the all-ignored batch defined), the input-size
rule, the seed's options, and the per-model contract (output shape, every parameter's gradient)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_impl
from parity_tests import seed_pspnet as seed
from parity_tests.conftest import keras_contract_build
from torch_impl.losses import segmentation_cross_entropy as torch_segmentation_ce
from torch_impl.weights import load_state_dict
from twins_cli.parity import randomize_batchnorm, rel_err

CLASSES = 21
SMALL = 33  # a 5x5 map after layer2: bins 2, 3 and 6 do not divide it
EVAL_SIZE = 65  # the small size: a 9x9 map


def seed_module(dropout=0.1):
    torch.manual_seed(0)
    module = seed.PSPNet(layers=50, classes=CLASSES, dropout=dropout, pretrained=False)
    randomize_batchnorm(module, 0)
    return module.eval()


def batch(size, n=2, seed_=0):
    return np.random.RandomState(seed_).randn(n, 3, size, size).astype(np.float32)


def labels(size, n=2, seed_=0, ignored=0.2):
    rng = np.random.RandomState(seed_ + 1)
    y = rng.randint(0, CLASSES, size=(n, size, size)).astype(np.int64)
    y[rng.rand(*y.shape) < ignored] = 255
    return y


def test_the_seeds_state_dict_loads_strictly_and_computes_the_same():
    """Keys, shapes and order are the seed's (`layer0.0.weight`, `ppm.features.{i}.1.weight`, `cls.4`,
    `aux.4`); its state_dict loads with strict=True (also under DataParallel's `module.` prefix), the eval
    logits are equal, and so are the training mode's (prediction, main loss, aux loss)."""
    theirs = seed_module(dropout=0.0)
    ours = torch_impl.build("pspnet", dropout=0.0)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    report = load_state_dict(ours, {f"module.{k}": v for k, v in theirs.state_dict().items()}, strict=True)
    assert not report.missing and not report.unexpected
    x = torch.from_numpy(batch(SMALL))
    with torch.no_grad():
        ours.eval(), theirs.eval()
        assert torch.equal(ours(x), theirs(x))
        ours.train(), theirs.train()
        y = torch.from_numpy(labels(SMALL))
        for a, b in zip(ours(x, y), theirs(x, y)):
            assert torch.equal(a, b)


def test_ignored_pixels_do_not_count_and_an_all_ignored_batch_is_zero():
    """The loss is the mean over labelled pixels: a direct numpy computation agrees, logits under ignored
    pixels change nothing, and with every pixel ignored the loss is 0 with zero gradients (the seed's
    `CrossEntropyLoss(ignore_index=255)` gives NaN there, which would poison the next step)."""
    rng = np.random.RandomState(0)
    logits = torch.from_numpy(rng.randn(2, 5, 4, 6)).requires_grad_(True)
    y = torch.from_numpy(rng.randint(0, 5, size=(2, 4, 6)))
    y[0, :2] = 255
    log_p = torch.log_softmax(logits.detach(), 1).numpy()
    valid = y.numpy() != 255
    n, h, w = np.nonzero(valid)
    expected = -log_p[n, y.numpy()[n, h, w], h, w].mean()
    assert abs(float(torch_segmentation_ce(logits.detach(), y)) - expected) < 1e-12
    moved = logits.detach().clone()
    moved[0, :, :2] += 7.0
    assert float(torch_segmentation_ce(moved, y)) == pytest.approx(expected, abs=1e-12)
    everything_ignored = torch.full_like(y, 255)
    loss = torch_segmentation_ce(logits, everything_ignored)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad.abs().max()) == 0.0
    assert torch.isnan(torch.nn.CrossEntropyLoss(ignore_index=255)(logits.detach(), everything_ignored))


@pytest.mark.keras
def test_the_keras_loss_is_the_torch_loss_on_this_backend():
    """`keras_impl.losses.segmentation_cross_entropy` against the torch twin's, with ignored pixels and with
    none labelled; a Keras loss that scores the ignored pixels as class 0 is caught by the same comparison."""
    import keras

    from keras_impl.losses import SegmentationCrossEntropy, segmentation_cross_entropy

    rng = np.random.RandomState(2)
    logits = rng.randn(2, 5, 4, 6).astype(np.float32)
    y = rng.randint(0, 5, size=(2, 4, 6)).astype(np.int64)
    y[1, 1:] = 255
    nhwc = logits.transpose(0, 2, 3, 1)
    want = float(torch_segmentation_ce(torch.from_numpy(logits), torch.from_numpy(y)))
    got = float(keras.ops.convert_to_numpy(segmentation_cross_entropy(nhwc, y)))
    assert abs(got - want) < 1e-6
    assert abs(float(keras.ops.convert_to_numpy(SegmentationCrossEntropy()(y.astype(np.float32), nhwc))) - want) < 1e-6
    from keras_impl.training import input_value_and_grad

    loss, grad = input_value_and_grad(lambda z: segmentation_cross_entropy(z, np.full_like(y, 255)), nhwc)
    assert float(loss) == 0.0 and np.abs(grad).max() == 0.0  # all ignored: 0, and no gradient
    wrong = float(keras.ops.convert_to_numpy(
        keras.ops.mean(keras.losses.sparse_categorical_crossentropy(np.where(y == 255, 0, y), nhwc, from_logits=True))))
    assert abs(wrong - want) > 1e-3


@pytest.mark.keras
def test_the_seeds_weights_through_the_bridge_match_on_this_backend():
    """The seed's weights in the Keras twin: eval logits at 65x65 within 1e-5 relative of the seed module's
    (a 9x9 map: the 2x2 and 6x6 bins do not divide it), and the training view's two outputs give the seed's
    main and aux losses (dropout off on both sides, batch statistics in both BatchNorms)."""
    import keras

    import keras_impl
    from keras_impl.common import initial_values_not_drawn
    from keras_impl.training import training_view
    from keras_impl.weights import load_torch_state_dict

    theirs = seed_module(dropout=0.0)
    with initial_values_not_drawn():  # every variable is loaded next, strictly
        model = keras_impl.build("pspnet", dropout=0.0)
    report = load_torch_state_dict(model, theirs.state_dict(), strict=True)
    assert not report.missing and not report.unexpected and not report.mismatched
    x = batch(EVAL_SIZE)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x.transpose(0, 2, 3, 1), training=False)).transpose(0, 3, 1, 2)
    assert got.shape == want.shape == (2, CLASSES, EVAL_SIZE, EVAL_SIZE)
    assert rel_err(got, want) < 1e-5

    from keras_impl.losses import segmentation_cross_entropy

    x, y = batch(SMALL, seed_=3), labels(SMALL, seed_=3)
    theirs.train()
    with torch.no_grad():
        _, main_loss, aux_loss = theirs(torch.from_numpy(x), torch.from_numpy(y))
    main, aux = training_view(model, ("aux",))(x.transpose(0, 2, 3, 1), training=True)
    for output, loss in ((main, main_loss), (aux, aux_loss)):
        assert abs(float(keras.ops.convert_to_numpy(segmentation_cross_entropy(output, y))) - float(loss)) < 1e-5


def test_input_sizes_the_output_size_and_the_seeds_options():
    """(H - 1) % 8 == 0 is refused otherwise, naming the nearest sizes; zoom_factor sets the output size
    (`(H - 1) / 8 * zoom + 1`); the seed's asserts are errors that say what was given; labels out of range
    are refused by the training forward."""
    model = torch_impl.build("pspnet", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"8k \+ 1.*got 64x64; the nearest sizes that work are 57x57 and 65x65"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 9x9"):
        model(torch.zeros(1, 3, 1, 1))
    with torch.no_grad():
        for zoom, size in ((1, 5), (2, 9), (4, 17), (8, 33)):
            out = torch_impl.build("pspnet", num_classes=3, zoom_factor=zoom).eval()(torch.zeros(1, 3, 33, 33))
            assert out.shape == (1, 3, size, size), zoom
        assert torch_impl.build("pspnet", num_classes=3, use_ppm=False).eval()(torch.zeros(1, 3, 17, 25)).shape == \
            (1, 3, 17, 25)
    for options, message in (({"layers": 34}, "layers must be one of 50, 101, 152"),
                             ({"bins": (1, 2, 3, 4, 5)}, "divides 2048"), ({"num_classes": 1}, "num_classes > 1"),
                             ({"zoom_factor": 3}, "zoom_factor must be one of")):
        with pytest.raises(ValueError, match=message):
            torch_impl.build("pspnet", **options)
    model.train()
    with pytest.raises(ValueError, match="label 3 out of range: expected 0..2 or 255"):
        model(torch.zeros(2, 3, 17, 17), torch.full((2, 17, 17), 3))
    assert sum(p.numel() for p in torch_impl.build("pspnet", layers=101).parameters()) > \
        sum(p.numel() for p in torch_impl.build("pspnet").parameters())


@pytest.mark.keras
def test_the_keras_twin_refuses_the_same_sizes_and_options():
    import keras_impl

    model = keras_contract_build("pspnet", num_classes=3)
    with pytest.raises(ValueError, match=r"8k \+ 1.*got 64x64; the nearest sizes that work are 57x57 and 65x65"):
        model(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="NCHW"):
        model(np.zeros((1, 3, 33, 33), np.float32))
    with pytest.raises(ValueError, match="zoom_factor must be one of"):
        keras_impl.build("pspnet", zoom_factor=3)
    assert keras_contract_build("pspnet", num_classes=3, zoom_factor=2)(np.zeros((1, 33, 33, 3), np.float32)).shape == \
        (1, 9, 9, 3)


def test_every_torch_parameter_gets_a_gradient_from_main_plus_aux():
    """The training loss `main + 0.4 * aux` reaches every parameter (the aux head's through the aux loss,
    layer4 / PPM / cls through the main loss)."""
    from torch_impl.training import loss_for

    model = torch_impl.build("pspnet", num_classes=3).train()
    out = model(torch.randn(2, 3, SMALL, SMALL))
    assert isinstance(out, tuple) and [t.shape for t in out] == [(2, 3, SMALL, SMALL)] * 2
    y = torch.from_numpy(np.random.RandomState(0).randint(0, 3, size=(2, SMALL, SMALL)))
    loss_for("segmentation")(out, y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().max()) == 0.0]
    assert not dead, f"no gradient for {dead}"
