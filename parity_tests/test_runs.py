"""The run directory both trainers write (`twins.runs`): one config per run, best-epoch bookkeeping,
resume folders that are complete before `resume.json` names them, TensorBoard scalars."""
from __future__ import annotations

import json
import time

import pytest

from twins import checkpoints
from twins.runs import Position, Recipe, RunDir, Scalars, epoch_record, new_history, record_epoch


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


def test_a_saliency_run_picks_its_best_epoch_by_val_cc():
    history = new_history(Recipe(model="saliency_unet", framework="torch", data="DATA"))
    for epoch, cc in enumerate((0.2, 0.6, 0.5)):
        record_epoch(history, epoch_record(epoch, 0.001, {"loss": 0.1, "samples": 8, "seconds": 2.0},
                                           {"loss": 0.1, "cc": cc, "kld": 1.0, "sim": 0.3, "samples": 4,
                                            "seconds": 1.0}))
    assert (history["score"], history["best_epoch"], history["best_score"]) == ("cc", 1, 0.6)


def test_best_epoch_is_the_first_with_the_highest_val_accuracy():
    history = new_history(recipe())

    def rec(epoch, acc):
        return epoch_record(epoch, 0.001, {"loss": 1.0, "acc": 0.5, "samples": 8, "seconds": 2.0},
                            {"loss": 1.0, "acc": acc, "samples": 4, "seconds": 1.0})

    assert record_epoch(history, rec(0, 0.5))
    assert record_epoch(history, rec(1, 0.75))
    assert not record_epoch(history, rec(2, 0.75))  # the seed keeps the earlier one: epoch_acc > best_acc
    assert (history["score"], history["best_epoch"], history["best_score"]) == ("acc", 1, 0.75)
    assert history["epochs"][0]["train"]["samples_per_sec"] == 4.0


def test_resume_json_only_ever_names_a_complete_folder(tmp_path):
    run = RunDir(tmp_path)
    assert run.resume_state() is None
    run.save_resume(Position(1, 0, 4), lambda folder: (folder / "w.bin").write_bytes(b"0"), {"framework": "torch"})
    assert run.resume_state()["epoch"] == 1

    class Killed(Exception):
        pass

    def dies_half_way(folder):
        (folder / "w.bin").write_bytes(b"half")
        raise Killed

    with pytest.raises(Killed):
        run.save_resume(Position(1, 2, 6, {"seen": 8}), dies_half_way, {"framework": "torch"})
    state = run.resume_state()  # still after epoch 1, its folder intact
    assert state["epoch"] == 1 and (state["dir"] / "w.bin").read_bytes() == b"0"
    run.save_resume(Position(1, 2, 6, {"seen": 8}), lambda folder: (folder / "w.bin").write_bytes(b"1"),
                    {"framework": "torch"})
    state = run.resume_state()  # half-way through epoch 2: batch 2 is next, with the epoch's tally so far
    assert (state["epoch"], state["batch"], state["step"], state["meter"]) == (1, 2, 6, {"seen": 8})
    assert (state["dir"] / "w.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("resume-")) == ["resume-00000006"]
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


def test_a_resumed_run_drops_the_records_made_after_its_checkpoint(tmp_path):
    """Killed after writing history.json but before the next checkpoint: the resumed run makes those
    records again, so the history it continues from must not hold them twice."""
    run = RunDir(tmp_path)
    history = new_history(recipe())
    for epoch, acc in enumerate((0.5, 0.75, 0.9)):
        record_epoch(history, epoch_record(epoch, 0.01, {"loss": 1.0, "acc": 0.5, "samples": 8, "seconds": 1.0},
                                           {"loss": 1.0, "acc": acc, "samples": 4, "seconds": 1.0}))
    history["evals"] = [{"step": s, "epoch": s // 4, "loss": 1.0, "acc": 0.5} for s in (0, 3, 6, 9)]
    run.write_history(history)
    at = run.history_at({"epoch": 1, "batch": 3, "step": 7}, recipe())  # half-way through epoch 2
    assert [e["epoch"] for e in at["epochs"]] == [0] and [e["step"] for e in at["evals"]] == [0, 3, 6]
    assert (at["best_epoch"], at["best_score"]) == (0, 0.5)
    # 6 steps done: the eval after step index 6 is made again by the resumed run, so it goes.
    assert [e["step"] for e in run.history_at({"epoch": 1, "batch": 2, "step": 6}, recipe())["evals"]] == [0, 3]
    empty = RunDir(tmp_path / "fresh").history_at({"epoch": 0, "batch": 2, "step": 2}, recipe())
    assert empty["model"] == "resnet18" and empty["epochs"] == [] and empty["evals"] == []


def test_a_resume_marker_of_an_earlier_format_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "resume-0001").mkdir()
    (tmp_path / "resume.json").write_text('{"epoch": 1, "dir": "resume-0001", "framework": "keras"}')
    with pytest.raises(ValueError, match=r"earlier twins.*best.safetensors.*--weights"):
        RunDir(tmp_path).resume_state()


def test_an_epoch_tally_survives_a_checkpoint():
    from twins.runs import EpochMeter

    meter = EpochMeter()
    meter.add(1.0, 2, 4, 0.01)
    meter.add(0.5, 3, 4, 0.005)
    resumed = EpochMeter(meter.state())
    with resumed.paused():
        time.sleep(0.05)  # a val evaluation: not training time
    assert resumed.seconds - meter.state()["seconds"] < 0.04
    resumed.add(0.25, 4, 4, 0.001)
    result = resumed.result()
    assert result["step_losses"] == [1.0, 0.5, 0.25] and result["step_lrs"] == [0.01, 0.005, 0.001]
    assert result["loss"] == pytest.approx(1.75 / 3) and result["acc"] == 9 / 12 and result["samples"] == 12
    maps = EpochMeter(metrics=())  # a saliency run's train phase: the loss alone
    maps.add(0.5, None, 4, 0.01)
    assert "acc" not in maps.result() and "acc" not in maps.running() and maps.result()["loss"] == 0.5


def read_scalars(tf, directory) -> dict:
    values = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values[(value.tag, event.step)] = value.simple_value
    return values


def test_step_scalars_use_the_seeds_tags_in_their_own_stream(tmp_path):
    tf = pytest.importorskip("tensorflow")
    run = RunDir(tmp_path)
    scalars = Scalars(run)
    scalars.step(0, loss=2.0, lr=1e-3)
    scalars.step(10, loss=1.0, lr=5e-4, score=("accuracy", 0.25))
    scalars.flush()  # what a checkpoint does: a killed process has written these
    assert read_scalars(tf, run.tensorboard_path / "iteration") == {
        ("iteration/loss", 0): 2.0, ("iteration/learning_rate", 0): pytest.approx(1e-3),
        ("iteration/loss", 10): 1.0, ("iteration/learning_rate", 10): pytest.approx(5e-4),
        ("iteration/accuracy", 10): 0.25}
    scalars.close()


def test_a_flush_puts_every_step_on_disk_and_a_resumed_writer_marks_its_purge(tmp_path, monkeypatch):
    """tensorboardX's SummaryWriter queues events for a thread its flush() does not wait for (up to ten
    steps went missing before a checkpoint); the resumed run's file must not replace the killed one's, and
    must sort after it (TensorBoard reads a folder's files in name order): the ninth and eleventh writers of a
    process are the case an unpadded count got wrong (".11" < ".9")."""
    from twins.runs import EventFile

    tf = pytest.importorskip("tensorflow")
    monkeypatch.setattr(EventFile, "_opened", 7)  # the iteration streams below are the 9th and the 11th
    run = RunDir(tmp_path)
    killed = Scalars(run)
    for step in range(60):
        killed.step(step, loss=float(step), lr=1e-3)
    killed.flush()  # no close: the process dies here
    assert {s for (tag, s) in read_scalars(tf, run.tensorboard_path / "iteration") if tag == "iteration/loss"} \
        == set(range(60))
    resumed = Scalars(run, purge_step=1, purge_iteration=40)
    resumed.step(40, loss=-1.0)
    resumed.flush()
    files = sorted((run.tensorboard_path / "iteration").iterdir())
    assert len(files) == 2
    purges = [e.step for e in tf.compat.v1.train.summary_iterator(str(files[1])) if e.session_log.status == 1]
    assert purges == [40]  # SessionLog.START at the resume step: TensorBoard hides the killed run's 40..59
    assert read_scalars(tf, run.tensorboard_path / "iteration")[("iteration/loss", 59)] == 59.0
    killed.close()
    resumed.close()
