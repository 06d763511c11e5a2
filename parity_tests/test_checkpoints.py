"""Checkpoint files and the torch-side exclude-final-layer restore (no Keras needed)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import torch_impl
from torch_impl.weights import load_state_dict, state_dict_numpy
from twins import checkpoints
from twins.checkpoints import CheckpointError, CheckpointMismatchError
from parity_tests.conftest import torchvision_state_dict


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return state_dict_numpy(torch_impl.build("resnet18"))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors", ".npz"])
def test_every_format_round_trips(tmp_path, resnet18_state, suffix):
    path = checkpoints.write(tmp_path / f"r18{suffix}", resnet18_state)
    back = checkpoints.read(path)
    assert sorted(back) == sorted(resnet18_state)  # safetensors stores keys sorted
    assert all(np.array_equal(back[k], resnet18_state[k]) for k in back)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert checkpoints.temp_files(tmp_path) == []


def test_pth_written_by_torch_save_with_a_wrapper_is_read(tmp_path):
    model = torch_impl.build("resnet18")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    state = checkpoints.read(tmp_path / "ckpt.pth")
    assert "fc.weight" in state and "layer4.1.bn2.running_var" in state


def test_truncated_and_non_checkpoint_files_are_refused_clearly(tmp_path, resnet18_state):
    for suffix in (".pth", ".safetensors", ".npz"):
        good = checkpoints.write(tmp_path / f"good{suffix}", resnet18_state)
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
        with pytest.raises(CheckpointError, match=r"bad.*could not read.*truncated or not a checkpoint"):
            checkpoints.read(bad)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="could not read as a PyTorch checkpoint"):
        checkpoints.read(text)
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint format '.ckpt'.*\.pth"):
        checkpoints.read(tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: \S+y.ckpt \(nor y.ckpt.index"):
        checkpoints.read(tmp_path / "y.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoints.read(tmp_path / "missing.pth")


def test_a_failed_write_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    def writer(tmp):
        tmp.write_text("half")
        raise Boom

    with pytest.raises(Boom):
        checkpoints.write_atomic(tmp_path / "out.safetensors", writer)
    assert list(tmp_path.iterdir()) == []


def test_torch_strict_load_lists_every_problem_and_touches_nothing(resnet18_state):
    target = torch_impl.build("resnet50")
    before = state_dict_numpy(target)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(target, resnet18_state)
    message = str(info.value)
    assert "checkpoint does not fit resnet50" in message
    assert "missing keys" in message and "layer1.0.conv3.weight" in message
    assert "shape mismatches" in message
    assert "layer1.0.conv1.weight: model (64, 64, 1, 1) vs checkpoint (64, 64, 3, 3)" in message
    assert "fc.weight: model (1000, 2048) vs checkpoint (1000, 512)" in message
    report = info.value.report
    assert report.missing and report.mismatched and not report.unexpected
    after = state_dict_numpy(target)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_torch_unexpected_keys_and_module_prefix(resnet18_state):
    extra = {f"module.{k}": v for k, v in resnet18_state.items()}
    extra["module.head.weight"] = np.zeros((2, 2), np.float32)
    model = torch_impl.build("resnet18")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys.*\n\s+head.weight"):
        load_state_dict(model, extra)
    report = load_state_dict(model, extra, strict=False)
    assert report.unexpected == ["head.weight"] and len(report.loaded) == 102


def test_torch_exclude_final_layer_restore_keeps_the_fresh_head(resnet18_state):
    model = torch_impl.build("resnet18", num_classes=2)
    fresh_fc = model.fc.weight.detach().clone()
    report = load_state_dict(model, resnet18_state, exclude=("fc",))
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, fresh_fc)
    np.testing.assert_array_equal(model.conv1.weight.detach().numpy(), resnet18_state["conv1.weight"])
    # "fc" is a module prefix, not a string prefix
    assert not checkpoints.excluded("fc2.weight", ("fc",)) and checkpoints.excluded("fc.weight", ("fc.",))


@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
def test_a_checkpoint_laid_out_as_torchvisions_loads_strictly(tmp_path, model_name):
    """A file with torchvision's own keys and shapes (from the committed manifest, not from our twin),
    saved as torchvision's files are (a bare state_dict through torch.save, counters included), loads
    into the twin with strict=True, every tensor where its key says."""
    rng = np.random.RandomState(0)
    state = {}
    for key, shape in torchvision_state_dict(model_name):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.from_numpy(rng.randn(*shape).astype(np.float32))
    torch.save(state, tmp_path / f"{model_name}.pth")
    target = torch_impl.build(model_name)
    report = load_state_dict(target, tmp_path / f"{model_name}.pth", strict=True)
    assert report.ok and not report.skipped
    assert len(report.loaded) == len([k for k in state if not k.endswith("num_batches_tracked")])
    ours = target.state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(ours[key], value), key


def test_a_pickle_with_code_is_refused_without_advice_to_run_it(tmp_path):
    torch.save({"weights": torch.zeros(2), "hook": print}, tmp_path / "untrusted.pth")
    with pytest.raises(CheckpointError) as info:
        checkpoints.read(tmp_path / "untrusted.pth")
    message = str(info.value)
    assert "untrusted.pth" in message and "refers to print" in message
    assert "weights_only" not in message and "Re-running" not in message


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out.safetensors"
    checkpoints.write(out, {"w": np.ones(3, np.float32)})
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(out) and events[2][1] == str(tmp_path)


def test_temp_files_finds_what_a_killed_writer_leaves(tmp_path):
    """The check the other tests use for "no temporary file left behind" must see one when there is."""
    checkpoints.write(tmp_path / "kept.npz", {"w": np.ones(2)})
    assert checkpoints.temp_files(tmp_path) == []
    leftover = checkpoints.atomic_path(tmp_path / "report.json")  # what a SIGKILL mid-write leaves
    assert checkpoints.temp_files(tmp_path) == [leftover]
