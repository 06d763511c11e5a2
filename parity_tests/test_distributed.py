"""Data-parallel training on the engines the ecosystems use (`twins.distributed`, `torch_impl.distributed`,
`keras_impl.distributed`, `twins dp-parity`): the sampler's split of every global batch, one DDP step (torchrun,
2 gloo processes) and one Keras DataParallel step (2 jax CPU devices) against single-process steps in float64,
and `twins train resnet18` run under torchrun and on 2 jax devices, resumed included.

Everything here starts its own processes (torchrun, or a jax process with JAX_NUM_CPU_DEVICES=2), so it runs
once, in the tensorflow pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.conftest import BACKEND, CORES, USER_ENV
from twins_cli.parity.launch import thread_env
from twins.distributed import World, split_problem

ROOT = Path(__file__).resolve().parent.parent
SIZE, BATCH = 32, 4

pytestmark = [pytest.mark.skipif(BACKEND != "tensorflow", reason="starts its own processes: the tensorflow pass only"),
              pytest.mark.heavy]  # torchrun's two ranks and their launcher, two-device jax processes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from twins.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), train=8, val=4, size=SIZE, seed=3)


def run(command, env=None, timeout=600):
    """`command` with a thread per core among its two replicas (two torchrun ranks, or jax's two CPU devices):
    what `conftest.share_cores` gives a single process with the cores to itself would oversubscribe them."""
    shared = thread_env(max(1, CORES // 2), USER_ENV)
    env = {**os.environ, **shared, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def twins(*args, env=None):
    return run([sys.executable, "-m", "twins_cli.main", *args], env)


def torchrun(*args, replicas=2):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={replicas}",
                "-m", "twins_cli.main", *args])


def dp_parity(tmp_path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"dp-{len(list(tmp_path.iterdir()))}.json"
    done = twins("dp-parity", "resnet18", *args, "--json", str(out))
    assert out.is_file(), done.stdout + done.stderr
    return done, json.loads(out.read_text())


def rows(result, against):
    return {r["check"]: r for r in result["rows"] if r["against"] == against}


# ----------------------------------------------------------------------------------------------
# the split of a global batch


def test_world_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert World.from_env() == World(1, 2, 1) and not World.from_env().main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"\$RANK 2 is not a rank of \$WORLD_SIZE 2"):
        World.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match=r"\$RANK must be an integer"):
        World.from_env()


def test_split_problem_names_what_does_not_divide():
    assert split_problem(8, 2, 20, drop_last=False) is None  # last batch of 4: 2 rows each
    assert "--batch-size 6 (the global batch) does not split over 4 replicas" in split_problem(6, 4, 24, False)
    assert "leave a last batch of 3, which does not split over 2 replicas" in split_problem(8, 2, 19, False)
    assert split_problem(8, 2, 19, drop_last=True) is None


@pytest.mark.parametrize("drop_last", [False, True], ids=["every-sample", "drop-last"])
def test_replicas_together_load_the_global_batch(shapes, drop_last):
    """The replicas' batches at step i (torch's DistributedSampler split, reseeded per epoch) hold exactly the
    rows of the single-process plan's batch i, with the same augmentation draws; a resumed epoch's sampler
    starts at its next batch."""
    from torch_impl.train import loader
    from twins.data import BatchPlan, ImageFolder, train_transform

    folder = ImageFolder(shapes, "train")  # 16 images: batches of 6 leave 4 (2 a replica), or are dropped
    plan = BatchPlan(folder, 6, train_transform(SIZE), shuffle=True, seed=3, drop_last=drop_last)
    for epoch in (0, 1):
        shards = [list(loader(plan, 0, epoch, world=World(r, 2))) for r in range(2)]
        assert [len(s) for s in shards] == [len(plan)] * 2
        for index in range(len(plan)):
            x, y = plan.batch(epoch, index)
            got = [(s[index][0].numpy().transpose(0, 2, 3, 1), s[index][1].numpy()) for s in shards]
            # DistributedSampler's split: replica r holds rows r, r + 2, ...
            assert np.array_equal(got[0][0], x[0::2]) and np.array_equal(got[1][0], x[1::2])
            assert np.array_equal(np.concatenate([got[0][1], got[1][1]]), np.concatenate([y[0::2], y[1::2]]))
    assert not np.array_equal(plan.batch(0, 0)[0], plan.batch(1, 0)[0])  # set_epoch reshuffles
    resumed = list(loader(plan, 0, 1, start=1, world=World(1, 2)))
    assert len(resumed) == len(plan) - 1 and np.array_equal(resumed[0][0].numpy().transpose(0, 2, 3, 1),
                                                            plan.batch(1, 1)[0][1::2])


def test_cpu_sync_batchnorm_keeps_checkpoint_keys_and_is_batchnorm_alone():
    """`--sync-bn` on the CPU swaps every BatchNorm for CpuSyncBatchNorm over the same tensors: the state_dict
    keys and values are unchanged, and outside a process group it computes what BatchNorm does."""
    import copy

    import torch

    from torch_impl import build
    from torch_impl.distributed import CpuSyncBatchNorm, sync_batchnorm

    torch.manual_seed(0)
    model = build("resnet18", num_classes=3)
    plain = copy.deepcopy(model)
    synced = sync_batchnorm(model, torch.device("cpu"))
    assert sum(isinstance(m, CpuSyncBatchNorm) for m in synced.modules()) == 20
    assert list(synced.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, SIZE, SIZE)
    assert torch.equal(synced.train()(x), plain.train()(x))
    assert torch.equal(synced.bn1.running_mean, plain.bn1.running_mean)


# ----------------------------------------------------------------------------------------------
# one step: data-parallel against single-process


def test_ddp_step_with_sync_bn_equals_the_global_batch_step(tmp_path):
    """torchrun, 2 gloo processes of 4 rows, SyncBatchNorm: the loss, gradients, parameter updates and running
    statistics of one SGD step equal one single-process step over the 8 rows (float64)."""
    done, result = dp_parity(tmp_path, "--framework", "torch", "--sync-bn")
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["engine"] == "DistributedDataParallel (gloo)" and result["replicas"] == 2
    assert set(rows(result, "global batch")) == {"loss", "gradients", "step_params", "step_bn_stats"}
    assert all(r["passed"] and r["error"] <= r["bound"] for r in result["rows"])


def test_ddp_step_without_sync_bn_is_the_mean_of_per_replica_steps(tmp_path):
    """Without SyncBatchNorm each replica normalises with its own rows' statistics. What differs from the global
    batch is measured (and must differ: a run that synchronised anyway would fail here), and what DDP computes
    instead is checked against an independent construction: the mean of the replicas' single-process losses
    and gradients, and the running statistics of replica 0's rows alone."""
    done, result = dp_parity(tmp_path, "--framework", "torch")
    assert done.returncode == 0, done.stdout + done.stderr
    differs, per_replica = rows(result, "global batch"), rows(result, "per replica")
    assert all(r["expected"] == "differs" and r["error"] > 1e-3 for r in differs.values())
    assert all(r["expected"] == "equal" and r["error"] <= r["bound"] for r in per_replica.values())


def test_ddp_step_fails_when_a_replica_loads_the_wrong_rows(tmp_path):
    """Shown failing: replica 1 fed replica 0's rows (a sampler that forgets its rank); and a model the Keras
    step cannot compare refused."""
    done, result = dp_parity(tmp_path, "--framework", "torch", "--sync-bn", "--tamper")
    assert done.returncode == 1
    assert not any(r["passed"] for r in result["rows"]) and "0 passed, 4 failed" in done.stdout
    refused = twins("dp-parity", "inception_v3")
    assert refused.returncode != 0 and "classifiers without aux heads" in refused.stderr
    assert "with aux heads (AuxLogits.fc)" in refused.stderr


def test_keras_data_parallel_step_on_jax_equals_the_global_batch_step(tmp_path):
    """Keras DataParallel over 2 jax CPU devices (JAX_NUM_CPU_DEVICES=2): jax computes on the sharded global
    batch, so BatchNorm's statistics are the global batch's and one step equals the single-device step over
    all 8 rows; with device 1 fed device 0's rows it fails."""
    done, result = dp_parity(tmp_path, "--framework", "keras")
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["engine"] == "keras.distribution.DataParallel (jax, 2 cpu devices)"
    assert set(rows(result, "global batch")) == {"loss", "step_params", "step_bn_stats"}
    assert all(r["passed"] and r["error"] <= r["bound"] for r in result["rows"])
    done, result = dp_parity(tmp_path, "--framework", "keras", "--tamper")
    assert done.returncode == 1 and not any(r["passed"] for r in result["rows"])


# ----------------------------------------------------------------------------------------------
# twins train, data-parallel


def steps(history) -> list[float]:
    return [loss for epoch in history["epochs"] for loss in epoch["train"]["step_losses"]]


def schema(value):
    """The keys of a history, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: schema(v) for k, v in value.items()}
    if isinstance(value, list):
        return [schema(value[0])] if value else []
    return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"


def test_twins_train_under_torchrun_writes_one_run_and_resumes(shapes, tmp_path):
    """`twins train resnet18` under torchrun with 2 gloo processes and --sync-bn: one run directory (rank 0
    writes), the single-process history schema, the same first-step loss as a single-process run (the same
    rows), and a run stopped after epoch 1 and resumed under torchrun repeats the uninterrupted run's steps."""
    common = ["resnet18", "--data", str(shapes), "--img-size", str(SIZE), "--batch-size", str(BATCH),
              "--workers", "0", "--sync-bn"]
    whole = torchrun("train", *common, "--epochs", "2", "--out", str(tmp_path / "ddp"))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert whole.stdout.count("epoch 2/2: train loss") == 1  # rank 0 alone prints
    assert "data-parallel: 2 torch processes in DistributedDataParallel, 2 rows each of every batch of 4; " \
           "BatchNorm statistics over the global batch (--sync-bn)" in whole.stdout
    single = twins("train", *common[:-1], "--epochs", "2", "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"
    assert sorted(p.name for p in ddp_run.iterdir()) == sorted(p.name for p in single_run.iterdir())
    history, reference = (json.loads((r / "history.json").read_text()) for r in (ddp_run, single_run))
    assert schema(history) == schema(reference)
    config = json.loads((ddp_run / "config.json").read_text())
    assert config["replicas"] == 2 and config["sync_bn"] is True
    assert json.loads((ddp_run / "resume.json").read_text())["replicas"] == 2
    # The first step's loss is computed from the same weights on the same rows (float32; later steps drift apart
    # chaotically at this size, see test_train.RECIPE_BOUND; the float64 step is test_ddp_step_with_sync_bn_...).
    assert abs(steps(history)[0] - steps(reference)[0]) <= 1e-5 * abs(steps(reference)[0])
    part = torchrun("train", *common, "--epochs", "1", "--out", str(tmp_path / "resumed"))
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    rest = torchrun("train", "--resume", "--epochs", "2", "--out", str(tmp_path / "resumed"))
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert steps(resumed) == steps(history) and len(resumed["epochs"]) == 2


def test_twins_train_keras_on_two_jax_devices(shapes, tmp_path):
    """`twins train resnet18 --framework keras --backend jax --devices 2` on 2 jax CPU devices: one run
    directory with the single-process history schema, and the header says how the batch was split."""
    out = tmp_path / "keras-dp"
    done = twins("train", "resnet18", "--framework", "keras", "--backend", "jax", "--devices", "2", "--data",
                 str(shapes), "--img-size", str(SIZE), "--batch-size", str(BATCH), "--workers", "0", "--epochs", "1",
                 "--out", str(out), env={"JAX_NUM_CPU_DEVICES": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data-parallel: Keras DataParallel over 2 jax devices, 2 rows each of every batch of 4" in done.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 1 and len(steps(history)) == 4
    from twins.runs import Recipe, new_history

    recipe = Recipe(model="resnet18", framework="keras", data=str(shapes))
    assert set(history) == set(new_history(recipe))
    assert json.loads((out / "config.json").read_text())["replicas"] == 2


def test_keras_devices_need_jax_and_enough_devices(shapes, tmp_path):
    """--devices on a backend Keras does not distribute on names jax; more devices than jax sees names
    JAX_NUM_CPU_DEVICES; the torch twin's --devices and the Keras twin's --sync-bn name what to use instead."""
    common = ["train", "resnet18", "--data", str(shapes), "--img-size", str(SIZE), "--out", str(tmp_path / "r")]
    done = twins(*common, "--framework", "keras", "--backend", "tensorflow", "--devices", "2")
    assert done.returncode != 0 and "trains data-parallel on the jax backend only" in done.stderr
    assert "this run is on tensorflow: add --backend jax" in done.stderr
    done = twins(*common, "--framework", "keras", "--backend", "jax", "--devices", "2")
    assert done.returncode != 0 and "--devices 2: jax sees 1 device" in done.stderr
    assert "JAX_NUM_CPU_DEVICES=2" in done.stderr
    done = twins(*common, "--framework", "torch", "--devices", "2")
    assert done.returncode != 0 and "torchrun --standalone --nproc_per_node=2 -m twins_cli.main train" in done.stderr
    done = twins(*common, "--framework", "keras", "--backend", "jax", "--sync-bn")
    assert done.returncode != 0 and "--sync-bn is the torch twin's" in done.stderr
    done = twins(*common, "--framework", "keras", "--backend", "jax", "--devices", "2", "--batch-size", "3",
                 env={"JAX_NUM_CPU_DEVICES": "2"})
    assert done.returncode != 0 and "--batch-size 3 (the global batch) does not split over 2 replicas" in done.stderr
    assert not (tmp_path / "r").exists()


def test_pspnet_needs_two_images_per_replica_without_sync_bn(tmp_path):
    """pspnet's BatchNorm after the 1x1 pyramid bin needs two images; torch replicas without SyncBatchNorm
    normalise their own rows, so a global batch of 2 over 2 processes is refused before any process group is
    joined (rank 0 of 2, as torchrun would start it)."""
    from twins.shapes import make_voc

    voc = make_voc(tmp_path / "voc", train=4, val=2, size=33, seed=0)
    common = ["train", "pspnet", "--data", str(voc), "--img-size", "33", "--batch-size", "2", "--epochs", "1",
              "--out", str(tmp_path / "r")]
    rank0 = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    done = twins(*common, env=rank0)
    assert done.returncode != 0
    assert "pspnet trains with batches of 2 images or more per replica (2 replicas without --sync-bn)" in done.stderr
