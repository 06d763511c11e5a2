"""The run directory both trainers write (`twins.runs`): one config per run, best-epoch bookkeeping,
resume folders that are complete before `resume.json` names them, TensorBoard scalars."""
from __future__ import annotations

import json

import pytest

from twins import checkpoints
from twins.runs import Recipe, RunDir, Scalars, epoch_record, new_history, record_epoch


def recipe(**kw):
    return Recipe(model="resnet18", framework="torch", data="DATA", classes=["a", "b"], **kw)


def test_a_run_folder_is_started_once(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start(recipe(epochs=3))
    assert run.config()["epochs"] == 3 and run.classes_path.read_text() == "a\nb\n"
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume"):
        run.start(recipe())
    with pytest.raises(FileNotFoundError, match="holds no run"):
        RunDir(tmp_path / "other").config()


def test_best_epoch_is_the_first_with_the_highest_val_accuracy():
    history = new_history(recipe())

    def rec(epoch, acc):
        return epoch_record(epoch, 0.001, {"loss": 1.0, "acc": 0.5, "samples": 8, "seconds": 2.0},
                            {"loss": 1.0, "acc": acc, "samples": 4, "seconds": 1.0})

    assert record_epoch(history, rec(0, 0.5))
    assert record_epoch(history, rec(1, 0.75))
    assert not record_epoch(history, rec(2, 0.75))  # the seed keeps the earlier one: epoch_acc > best_acc
    assert (history["best_epoch"], history["best_val_acc"]) == (1, 0.75)
    assert history["epochs"][0]["train"]["samples_per_sec"] == 4.0


def test_resume_json_only_ever_names_a_complete_folder(tmp_path):
    run = RunDir(tmp_path)
    assert run.resume_state() is None
    run.save_resume(0, lambda folder: (folder / "w.bin").write_bytes(b"0"), {"framework": "torch"})
    assert run.resume_state()["epoch"] == 0

    class Killed(Exception):
        pass

    def dies_half_way(folder):
        (folder / "w.bin").write_bytes(b"half")
        raise Killed

    with pytest.raises(Killed):
        run.save_resume(1, dies_half_way, {"framework": "torch"})
    state = run.resume_state()  # still epoch 0, its folder intact
    assert state["epoch"] == 0 and (state["dir"] / "w.bin").read_bytes() == b"0"
    run.save_resume(1, lambda folder: (folder / "w.bin").write_bytes(b"1"), {"framework": "torch"})
    state = run.resume_state()
    assert state["epoch"] == 1 and (state["dir"] / "w.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("resume-")) == ["resume-0001"]
    assert json.loads((tmp_path / "resume.json").read_text())["framework"] == "torch"
    assert checkpoints.temp_files(tmp_path) == []


def test_tensorboard_scalars_are_readable(tmp_path):
    tf = pytest.importorskip("tensorflow")
    run = RunDir(tmp_path)
    scalars = Scalars(run)
    for epoch, acc in enumerate((0.5, 0.9)):
        scalars.epoch(epoch_record(epoch, 0.01, {"loss": 1.0 - acc, "acc": acc, "samples": 8, "seconds": 1.0},
                                   {"loss": 0.5, "acc": acc, "samples": 4, "seconds": 1.0}))
    scalars.close()
    values = {}
    for path in run.tensorboard_path.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values[(value.tag, event.step)] = value.simple_value
    assert values[("val/acc", 1)] == pytest.approx(0.9) and values[("train/loss", 0)] == pytest.approx(0.5)
    assert values[("lr", 0)] == pytest.approx(0.01)
