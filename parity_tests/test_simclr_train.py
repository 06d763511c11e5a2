"""SimCLR's recipes (seed 003) on the training machinery: the kNN monitor against its definition, the cosine
schedule against torch's scheduler, the supervised CIFAR augmentation, recipe parity of the contrastive step
(torch loop against Keras' fit), and `twins train simclr_ssl` then `twins train simclr_sl --init-from` end to
end in both directions between the frameworks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity_tests.conftest import BACKEND
from parity_tests.recipes import BROKEN_RUNS_ON
from twins import checkpoints, metrics, optim
from twins_cli.parity import rel_err

# -------------------------------------------------------------------------------------- kNN monitor


def knn_by_hand(memory, labels, queries, classes, k, t):
    """The weighted vote written out per query: cosine similarities, the k largest, exp(s / t) per class."""
    out = []
    for q in queries:
        sims = [float(np.dot(q, m) / (np.linalg.norm(q) * np.linalg.norm(m))) for m in memory]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes = [sum(np.exp(sims[i] / t) for i in nearest if labels[i] == c) for c in range(classes)]
        out.append(int(np.argmax(votes)))
    return np.asarray(out)


def test_the_knn_monitor_is_the_weighted_vote_of_its_definition():
    rng = np.random.default_rng(0)
    memory, labels = rng.normal(size=(60, 12)), rng.integers(0, 4, 60)
    queries = rng.normal(size=(25, 12))
    for k, t in ((1, 0.1), (7, 0.1), (20, 0.5), (500, 0.1)):  # k above the memory's size: every row votes
        ours = metrics.knn_predict(memory, labels, queries, 4, k, t, chunk=8)
        assert np.array_equal(ours, knn_by_hand(memory, labels, queries, 4, k, t)), (k, t)
    # k = 1 is the nearest neighbour's label; and the weights matter: an unweighted vote differs here.
    nearest = (metrics.l2_normalize(queries) @ metrics.l2_normalize(memory).T).argmax(1)
    assert np.array_equal(metrics.knn_predict(memory, labels, queries, 4, 1), labels[nearest])
    # Two near neighbours of class 1 outweigh three far ones of class 0 at t 0.1, not when unweighted.
    memory2 = np.asarray([[1, 0.05], [1, -0.05], [0.2, 1], [0.2, 1.1], [0.2, 0.9]])
    labels2 = np.asarray([1, 1, 0, 0, 0])
    assert metrics.knn_predict(memory2, labels2, np.asarray([[1.0, 0.0]]), 2, k=5, t=0.1)[0] == 1
    assert knn_by_hand(memory2, labels2, np.asarray([[1.0, 0.0]]), 2, 5, 1e6)[0] == 0
    with pytest.raises(ValueError, match=r"label out of range: memory labels span \[0, 3\] for 3 classes"):
        metrics.knn_predict(memory, labels, queries, 3)
    with pytest.raises(ValueError, match=r"\(N, D\) memory and \(M, D\) query features"):
        metrics.knn_predict(memory, labels, queries[:, :5], 4)


def test_the_cosine_schedule_is_torchs_cosine_annealing():
    """`twins.optim.learning_rates(..., "cosine")` step by step against torch's CosineAnnealingLR (its closed
    form); a linear table is not within the bound, so the comparison can fail."""
    total, lr, end = 12, 0.3, 1e-3
    ours = optim.learning_rates(lr, end, total, "cosine")
    parameter = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([parameter], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=end)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert np.abs(ours - np.float32(theirs)).max() < 1e-7
    assert np.abs(optim.learning_rates(lr, end, total, "linear") - np.float32(theirs)).max() > 1e-2
    with pytest.raises(ValueError, match="unknown schedule 'step'; expected one of linear, cosine"):
        optim.learning_rates(lr, end, total, "step")


def test_the_supervised_cifar_augmentation_is_a_padded_crop_and_a_flip():
    from twins.data import cifar_test_transform, cifar_train_transform

    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    train, test = cifar_train_transform(), cifar_test_transform()
    plain = test(image)
    seen = set()
    for seed in range(40):
        x = train(image, np.random.default_rng(seed))
        assert x.shape == (32, 32, 3) and x.dtype == np.float32
        # Each output is a 32x32 window of the zero-padded normalised image, maybe mirrored.
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        found = [(top, left, flip) for top in range(9) for left in range(9) for flip in (False, True)
                 if np.array_equal(x, test(padded[top:top + 32, left:left + 32][:, ::-1 if flip else 1]))]
        assert found, seed
        seen.add(found[0][2])
        if found[0][:2] == (4, 4) and not found[0][2]:
            assert np.array_equal(x, plain)
    assert seen == {False, True}


# ----------------------------------------------------------------------------------- recipe parity


@pytest.mark.keras
def test_contrastive_recipe_parity_torch_loop_against_keras_fit(parity_worker):
    """The SSL recipe (SGD momentum 0.9, rate 0.3 with cosine decay, NT-Xent at t 0.5 on interleaved views) in
    the torch loop and in Keras' fit from the same weights on the same two-view batches: per-step losses, the
    kNN monitor and the weights after the steps agree (float64, as the other recipe parity tests). The same
    recipe with Keras' temperature at 0.55 is shown to break the comparison (torch pass)."""
    runs, out = parity_worker.recipe("contrastive")  # computed by the session's worker (parity_tests/recipes.py)
    t, k = runs["torch"]["epochs"][0], runs["keras"]["epochs"][0]
    assert len(t["train"]["step_losses"]) == 2 and t["train"]["step_lrs"] == k["train"]["step_lrs"]
    assert t["train"]["step_lrs"][1] == pytest.approx(0.15, rel=1e-6)  # cosine: half-way at the second of two
    assert t["train"]["samples"] == k["train"]["samples"] == 8  # images, each two views
    steps = np.abs(np.subtract(t["train"]["step_losses"], k["train"]["step_losses"])).max()
    a, b = (checkpoints.read(out / f / "best.safetensors") for f in ("torch", "keras"))
    weights = max(rel_err(b[key], a[key]) for key in b)
    print(f"contrastive recipe parity on {BACKEND}: step losses {steps:.2g}, weights {weights:.2g}, kNN "
          f"{t['val']['knn']} / {k['val']['knn']}")
    assert steps < 2e-5 and weights < 1e-4 and t["val"]["knn"] == k["val"]["knn"] > 0.1  # chance: 0.1
    assert runs["torch"]["score"] == "knn" and set(t["val"]) == {"knn", "samples", "seconds", "samples_per_sec"}
    if BACKEND == BROKEN_RUNS_ON:  # the run shown breaking the comparison (`recipes.BROKEN_RUNS_ON`)
        off = np.abs(np.subtract(t["train"]["step_losses"], runs["keras-t-off"]["epochs"][0]["train"]["step_losses"]))
        assert off.min() > 2e-5, off


# -------------------------------------------------------------------------------- the CLI, end to end


@pytest.mark.heavy  # five `twins train` processes
def test_twins_train_ssl_then_sl_across_the_frameworks(tmp_path):
    """A Keras SSL run fine-tuned by torch, a torch SSL run probed linearly by Keras (its encoder frozen, so its
    conv kernels come out as the SSL run left them), the kNN monitor in history.json, the log and TensorBoard,
    the Keras run's kNN accuracy recomputed by the torch twin, and the errors of --init-from."""
    from parity_tests.cli import BACKEND_FREE, backend_free, refused
    from twins.shapes import make_cifar10

    if BACKEND != "tensorflow":
        pytest.skip("the CLI's SimCLR path is backend-free; the contrastive recipe is compared per backend above")
    data = make_cifar10(tmp_path / "cifar", train=4, test=10, seed=3)
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    ssl = {f: tmp_path / f"ssl-{f}" for f in ("keras", "torch")}
    for framework, out in ssl.items():
        done = backend_free("train", "simclr_ssl", "--framework", framework, "--out", str(out), "--knn-k", "5",
                            *common)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "20 train / 10 val images, two views each; labels of 10 classes" in done.stdout
        assert "NT-Xent (temperature 0.5) of view pairs, SGD lr 0.3 -> 0.0 (cosine decay) momentum 0.9" in done.stdout
        assert "val: kNN accuracy (k 5, t 0.1)" in done.stdout and "| val knn " in done.stdout
        history = json.loads((out / "history.json").read_text())
        assert history["score"] == "knn" and 0 <= history["epochs"][0]["val"]["knn"] <= 1
        assert list((out / "tensorboard").glob("events*"))
    # The torch twin recomputes the Keras run's kNN accuracy from its best weights.
    knn = json.loads((ssl["keras"] / "history.json").read_text())["epochs"][0]["val"]["knn"]
    done = backend_free("evaluate", "simclr_ssl", "--framework", "torch", "--weights",
                        str(ssl["keras"] / "best.safetensors"), "--data", str(data), "--knn-k", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"knn {knn:.4f}"
    # Keras SSL -> torch fine-tuning of the whole SL model.
    done = backend_free("train", "simclr_sl", "--framework", "torch", "--init-from", str(ssl["keras"]),
                        "--out", str(tmp_path / "sl-torch"), *common)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (f"(simclr_ssl, keras/{BACKEND_FREE}, best epoch): its enc starts this simclr_sl; its projector left out"
            in done.stdout)
    assert "loaded 100, skipped 6, missing 0, unexpected 0, mismatched 0" in done.stdout
    assert "parameters to update (62)" in done.stdout
    # torch SSL -> Keras linear probe: only `linear` trains, the encoder's kernels are the SSL run's.
    probe = tmp_path / "sl-keras"
    done = backend_free("train", "simclr_sl", "--framework", "keras", "--init-from", str(ssl["torch"]),
                        "--feature-extract", "--out", str(probe), *common)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (probe / "trainable.txt").read_text().split() == ["linear.weight", "linear.bias"]
    before, after = (checkpoints.read(p) for p in (ssl["torch"] / "best.safetensors", probe / "best.safetensors"))
    kernels = [k for k in after if k.startswith("enc.") and k.endswith("conv1.weight")]
    assert kernels and all(np.array_equal(after[k], before[k]) for k in kernels)
    history = json.loads((probe / "history.json").read_text())
    assert history["score"] == "acc" and json.loads((probe / "config.json").read_text())["init_from"] == str(ssl["torch"])
    # What a user gets wrong first.
    bad = refused("train", "resnet18", "--init-from", str(ssl["torch"]), "--out", str(tmp_path / "x"), *common)
    assert bad.returncode != 0 and "is a simclr_ssl run; resnet18 starts from a run of resnet18" in bad.stderr
    bad = refused("train", "simclr_sl", "--init-from", str(tmp_path), "--out", str(tmp_path / "x"), *common)
    assert bad.returncode != 0 and "not a run directory (no config.json)" in bad.stderr
    bad = refused("train", "simclr_sl", "--init-from", str(ssl["torch"]), "--weights", "w.pth",
                    "--out", str(tmp_path / "x"), *common)
    assert bad.returncode != 0 and "give one" in bad.stderr
    bad = refused("train", "simclr_ssl", "--preprocess", "cifar", "--out", str(tmp_path / "x"), *common)
    assert bad.returncode != 0 and "it learns from two augmented views of each image (simclr)" in bad.stderr
    bad = refused("predict", "simclr_ssl", "x.png", "--weights", str(ssl["torch"] / "best.safetensors"))
    assert bad.returncode != 0 and "twins evaluate simclr_ssl reports its kNN accuracy" in bad.stderr


# ------------------------------------------------------------------- the parity engine's contrastive rows


@pytest.mark.keras
def test_the_parity_engine_catches_a_wrong_pairing_and_a_wrong_projection(monkeypatch):
    """simclr_ssl's rows that are new to the engine turn red on a broken Keras side (the unbroken twins pass
    every row in test_parity.py): NT-Xent pairing row k with row k+2 instead of its other view (train_loss and
    gradients), and a projector bias 1e-3 off, which leaves the first output (the feature) right and the
    second (the projection) wrong (eval_output, naming output 1 of 2). In the tensorflow pass, as the
    mutations of test_mutations.py."""
    import os

    from keras import ops

    import keras_impl.losses
    from keras_impl import weights
    from twins_cli.parity import run_model

    if BACKEND != "tensorflow" and not os.environ.get("TWINS_MUTATIONS_EVERY_BACKEND"):
        pytest.skip("mutations run in the tensorflow pass (TWINS_MUTATIONS_EVERY_BACKEND=1 runs them here)")
    with monkeypatch.context() as patch:
        patch.setattr(keras_impl.losses, "pair_targets", lambda rows: (ops.arange(rows, dtype="int32") + 2) % rows)
        rows = {r.check: r for r in run_model("simclr_ssl", checks=("train_loss", "gradients"))}
    assert not rows["train_loss"].passed and rows["train_loss"].error is not None, rows["train_loss"]
    assert not rows["gradients"].passed and rows["gradients"].error is not None, rows["gradients"]

    original = weights.load_torch_state_dict

    def load(model, state_dict, *, exclude=(), strict=True):
        state = {k: v + 1e-3 if k == "projector.2.bias" else v for k, v in state_dict.items()}
        return original(model, state, exclude=exclude, strict=strict)

    monkeypatch.setattr(weights, "load_torch_state_dict", load)
    row = run_model("simclr_ssl", checks=("eval_output",))[0]
    assert not row.passed and "output 1: Keras" in row.detail, row
