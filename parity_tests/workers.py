"""The session's workers: one process per pass computes every parity row and every recipe-parity run the suite
asserts on, beside the pytest process.

`make test` used to start a worker per model (and per check group), each paying the imports and, on jax, its
own compilations, and ran the recipe-parity tests (Keras' fit, float64) in the pytest process, which kept what
tensorflow left of them. Now one process per Keras backend (`parity_tests/session_worker.py`) runs the pass's
whole plan (`session_plan`):
- every model's quick plan (`QUICK_SUITE`, what `make demo` computes too), resnet18's being every check at the
  mutation size (the mutation suite's control run, a superset of its quick rows); the Adam control run in the
  tensorflow pass; resnet18's Keras exports;
- the mutation suite's broken twins (`parity_tests/mutations.py`, tensorflow pass): 72 s of the pytest process's
  800 s in the tensorflow pass, while the worker finished its plan at 650 s;
- the four recipe-parity runs (`parity_tests/recipes.py`).
The torch twin's exports run in a second worker (backend `torch_impl`, no Keras), in the tensorflow pass.

The workers start when the tests are collected and compute while the in-process tests run (those leave a core
idle most of the time); the tests that read their results run after those (conftest's `rank`) and wait for
theirs. A worker writes its rows after every task, so a test waits for its own task, not for the whole plan.
Heavy tasks (several float64 copies of pspnet or the saliency U-Net, or vgg19_slim's 143 M parameters) never run
beside a test marked `heavy` (`twins_cli.parity.memory.HeavyLock`): the worker takes its light tasks meanwhile.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twins_cli.parity import (CHECKS, EXPORT_CHECKS, STEP_CHECKS, TORCH_EXPORT_CHECKS, TRAIN_CHECKS, Job, failed_row,
                              jobs, names)
from twins_cli.parity.plan import HEAVY_MODELS
from twins_cli.parity.launch import worker_command

from parity_tests.mutations import MODEL as MUTATION_MODEL, MUTATIONS, SIZE as MUTATION_SIZE

ROOT = Path(__file__).resolve().parent.parent
# Every format of resnet18 (the quick run's exports, QUICK_EXPORTS) on the current Keras backend; the torch twin's
# exports of three models (simclr_ssl: two outputs; pspnet: the align-corners resize and adaptive pooling). `make
# parity` exports every model from every backend (pspnet's Keras ONNX export alone takes 75 s in tf2onnx).
KERAS_EXPORTED = ("resnet18",)
TORCH_EXPORTED = ("resnet18", "simclr_ssl", "pspnet")
# Recipe parity per backend: the saliency recipe is compared on tensorflow's tf.function and jax's compiled fit
# (Keras' fit on the torch backend runs eagerly, TorchAdam's steps as the parity rows take them).
RECIPES = {"tensorflow": ("segmentation", "saliency", "classification", "contrastive"),
           "jax": ("segmentation", "saliency", "classification", "contrastive"),
           "torch": ("segmentation", "classification", "contrastive")}
TIMEOUT_S = 3600


def mutations_everywhere() -> bool:
    """The mutation suite (and its Adam control run) runs in the tensorflow pass; TWINS_MUTATIONS_EVERY_BACKEND=1
    runs it in every pass."""
    return bool(os.environ.get("TWINS_MUTATIONS_EVERY_BACKEND"))


def session_plan(backend: str) -> list[Job]:
    """Every parity job of this backend's test pass, heavy models first."""
    plan = []
    for job in jobs(names(), CHECKS, quick=True):
        if job.model == MUTATION_MODEL:  # the control run computes every check of resnet18 at the mutation size
            job = dataclasses.replace(job, checks=CHECKS, size=MUTATION_SIZE)
        plan.append(job)
    # The heavy models first: they run in a process that holds nothing else yet (the recipe runs, which leave
    # tensorflow's traced graphs behind, come after every parity job).
    plan.sort(key=lambda job: HEAVY_MODELS.index(job.model) if job.model in HEAVY_MODELS else len(HEAVY_MODELS))
    if backend == "tensorflow" or mutations_everywhere():
        plan.append(Job(MUTATION_MODEL, tuple(c for c in TRAIN_CHECKS if c in STEP_CHECKS["adam"]), MUTATION_SIZE,
                        "adam"))
    plan += [Job(model, EXPORT_CHECKS) for model in KERAS_EXPORTED]
    return plan


def torch_export_plan() -> list[Job]:
    return [Job(model, TORCH_EXPORT_CHECKS) for model in TORCH_EXPORTED]


class Worker:
    """A worker started in the background: `rows(index)` waits for that task's rows."""

    def __init__(self, backend: str, plan: list[dict], module: str):
        self.backend, self.plan = backend, plan
        self.dir = Path(tempfile.mkdtemp(prefix=f"twins-session-{backend}-"))
        plan_file, self.out = self.dir / "plan.json", self.dir / "rows.json"
        plan_file.write_text(json.dumps(plan))
        cmd, env = worker_command(backend, plan_file, self.out)
        self.claims = None
        if module != "twins_cli.parity":
            self.claims = self.dir / "claims"
            self.claims.mkdir()
            cmd = [sys.executable, "-m", module, *cmd[3:], "--recipes", str(self.dir / "recipes"),
                   "--claims", str(self.claims)]
        self.summary: list[str] = []  # the worker's last line, once it is closed
        self.taken: dict[int, list[dict]] = {}  # the light parity jobs this process computed itself
        self.waited = 0.0  # seconds the pytest process spent waiting for this worker's rows
        self.log = open(self.dir / "worker.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log)
        self.started = time.time()

    @classmethod
    def for_pass(cls, backend: str) -> "Worker":
        plan = [{"kind": "parity", **job.to_json()} for job in session_plan(backend)]
        mutations = [{"kind": "mutation", "mutation": m.name} for m in MUTATIONS
                     if backend == "tensorflow" or mutations_everywhere()]
        recipes = [{"kind": "recipe", "task": name} for name in RECIPES[backend]]
        return cls(backend, plan + mutations + recipes, "parity_tests.session_worker")

    @classmethod
    def torch_exports(cls) -> "Worker":
        from twins_cli.parity import TORCH_TWIN

        return cls(TORCH_TWIN, [job.to_json() for job in torch_export_plan()], "twins_cli.parity")

    def jobs(self, model: str, *, optimizer: str | None = None, exports: bool = False) -> list[int]:
        """The plan's jobs of `model`: a heavy model's parts (`twins_cli.parity.plan.PARTS`), else one."""
        found = [i for i, entry in enumerate(self.plan)
                 if entry.get("model") == model and entry.get("optimizer") == optimizer
                 and exports == any(c in EXPORT_CHECKS for c in entry["checks"])]
        if not found:
            raise KeyError(f"no parity job for {model} (optimizer {optimizer}, exports {exports}) in this session's "
                           f"plan")
        return found

    def model_rows(self, model: str, *, optimizer: str | None = None, exports: bool = False) -> list[dict]:
        """The rows of every job `jobs` names, in the plan's order."""
        return [row for index in self.jobs(model, optimizer=optimizer, exports=exports) for row in self.rows(index)]

    def mutation(self, name: str) -> list[dict]:
        """The rows of the broken twin of mutation `name` (`parity_tests/mutations.py`)."""
        index = next((i for i, entry in enumerate(self.plan) if entry.get("mutation") == name), None)
        if index is None:
            raise KeyError(f"no mutation {name!r} in this session's plan")
        return self.rows(index)

    def recipe(self, task: str) -> tuple[dict, Path]:
        """`({run name: history}, the folder of the runs)` of a recipe-parity task."""
        index = next((i for i, entry in enumerate(self.plan) if entry.get("task") == task), None)
        if index is None:
            raise KeyError(f"no recipe task {task!r} in this session's plan")
        rows = self.rows(index)
        assert "runs" in rows[0], rows[0]["detail"]
        return rows[0]["runs"], self.dir / "recipes" / task

    def done(self) -> list[int]:
        """The tasks the worker has finished."""
        try:
            return json.loads(self.out.read_text())["done"]
        except (OSError, ValueError):
            return []

    def rows(self, index: int) -> list[dict]:
        """The rows of task `index`: once the worker has written them, or, for a light parity job the worker has
        not started, computed in this process at once (`take`); a worker that died or ran out of time gives a
        failed row that says why."""
        if index in self.taken:
            return self.taken[index]
        if index not in self.done() and self.take(index):
            return self.taken[index]
        deadline, began = self.started + TIMEOUT_S, time.time()
        while index not in self.done() and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        self.waited += time.time() - began
        if index in self.done():
            return [r for r in json.loads(self.out.read_text())["rows"] if r["job"] == index]
        if self.proc.poll() is None:
            self.proc.kill()
            reason = f"the worker ran past {TIMEOUT_S} s"
        else:
            reason = f"the worker exited {self.proc.returncode}: {self.tail()}"
        entry = self.plan[index]
        return [failed_row(entry.get("model") or entry.get("task"), self.backend, reason)]

    def take(self, index: int) -> bool:
        """Compute light task `index` here if the worker has not claimed it (`twins_cli.parity.worker.claim`): the
        tests that read the workers' rows run last, and the pytest process would only wait for them. What a task
        made is released after it. Heavy tasks stay with the worker, and so do the recipe runs on tensorflow,
        whose fit leaves traced graphs behind in the process that runs it."""
        from parity_tests.session_worker import tasks_of
        from twins_cli.parity.worker import claim

        entry = self.plan[index]
        if self.claims is None or (entry["kind"] == "recipe" and self.backend == "tensorflow"):
            return False
        (task,) = tasks_of([entry], self.dir / "recipes")
        if task.heavy or not claim(self.claims, index):
            return False
        self.taken[index] = [{**row, "job": index} for row in task.run(self.backend)]
        return True

    def wait(self) -> None:
        """Until the worker has finished (or run out of time)."""
        for index in range(len(self.plan)):
            self.rows(index)

    def tail(self) -> str:
        self.log.flush()
        lines = (self.dir / "worker.log").read_text().strip().splitlines()
        return lines[-1] if lines else "no output"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        lines = (self.dir / "worker.log").read_text().splitlines()
        self.summary = [line for line in lines if line.startswith("[parity]") and " jobs" in line]
        tasks = sorted(task_times(lines), key=lambda t: -t[1])
        if tasks:
            self.summary.append(f"[parity] {self.backend}: slowest tasks: "
                                + ", ".join(f"{label} {seconds:.0f} s" for label, seconds in tasks[:SLOWEST]))
        self.summary.append(f"[parity] {self.backend}: the pytest process waited {self.waited:.0f} s for this "
                            f"worker's rows")
        shutil.rmtree(self.dir, ignore_errors=True)


# How many of a worker's slowest tasks the pass's summary names.
SLOWEST = 8
TASK_LINE = re.compile(r"^\[parity\] [^:]+: (.+): \d+ rows(?:, FAILED [^)]*?)? in ([\d.]+) s \(")


def task_times(lines: list[str]) -> list[tuple[str, float]]:
    """`[(label, seconds)]`, in the order they ran, of the tasks a worker's progress lines (`run_tasks`) report."""
    return [(m.group(1), float(m.group(2))) for m in map(TASK_LINE.match, lines) if m]
