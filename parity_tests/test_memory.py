"""`twins_cli.parity.memory.release_memory` between two models in a worker process: what is alive then is frozen
(`gc.freeze`), so later collections leave it alone, and what the model left as garbage is collected first.

Each case runs in a process of its own (freezing is for the rest of a process's life) with a stand-in for the
`keras` module (`release_memory` calls its `clear_session`), so no framework is imported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASE = r"""
import gc, json, sys, types, weakref

sys.modules["keras"] = types.SimpleNamespace(backend=types.SimpleNamespace(
    clear_session=lambda free_memory=True: None, backend=lambda: "tensorflow"))
from twins_cli.parity import memory

class Node:
    pass

def cycle():  # garbage that only a collection frees (each holds the other)
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

case = sys.argv[1]
gc.collect()
gc.freeze()  # what the worker's imports made (worker.prepare_process)
if case != "test process":
    memory.freeze_between_models()
if case == "frozen before the collection":  # a deliberate break: freeze, then collect
    collect = memory.gc.collect
    memory.trim_heap = lambda: (gc.freeze(), collect())
kept = [Node() for _ in range(50_000)]  # alive after the model: the modules its checks imported, say
left = cycle()  # the model's own garbage
memory.release_memory(between_models=True)
tracked = len(gc.get_objects())
later = cycle()  # the next model's garbage
gc.collect()
print(json.dumps({"left_freed": left() is None, "later_freed": later() is None, "tracked": tracked}))
"""


def run_case(case: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CASE, case], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_worker_freezes_what_outlives_a_model_after_collecting_its_garbage():
    worker = run_case("worker")
    # the model's garbage went, then the 50 000 live objects left the collector's lists; the next model's
    # garbage is still collected
    assert worker["left_freed"] and worker["later_freed"]
    assert worker["tracked"] < 5_000, worker

    # the pytest process (no `freeze_between_models`): its collections keep walking them
    test_process = run_case("test process")
    assert test_process["left_freed"] and test_process["later_freed"]
    assert test_process["tracked"] >= 50_000, test_process


def test_freezing_before_the_collection_would_keep_a_models_garbage_for_good():
    broken = run_case("frozen before the collection")
    assert not broken["left_freed"], "the check above cannot tell a freeze that keeps garbage"
    assert broken["later_freed"]


@pytest.mark.parametrize("module", ["twins_cli.parity.worker", "parity_tests.session_worker"])
def test_the_worker_entry_points_freeze_between_models(module, monkeypatch, tmp_path):
    """Both worker processes (the parity engine's and the test session's) turn it on before their first task."""
    import importlib

    from twins_cli.parity import memory

    monkeypatch.setattr(memory, "FREEZE_BETWEEN_MODELS", False)
    entry = importlib.import_module(module)
    calls = []
    monkeypatch.setattr(entry, "freeze_between_models", lambda: calls.append(True))
    monkeypatch.setattr(entry, "run_tasks", lambda *a, **k: calls.append("tasks"))
    monkeypatch.setattr(entry, "set_parity_env", lambda: None)
    main = entry.worker_main if module.endswith("parity.worker") else entry.main
    argv = ["--backend", "torch_impl", "--model", "resnet18", "--json-out", "unused.json"]
    if module.startswith("parity_tests"):
        plan = tmp_path / "plan.json"
        plan.write_text("[]")
        argv = ["--backend", "tensorflow", "--plan", str(plan), "--json-out", "unused.json", "--recipes", "unused"]
        monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    main(argv)
    assert calls[:2] == [True, "tasks"]
