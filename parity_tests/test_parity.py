"""The parity checks of DESIGN.md for every model and builder-option variant, on the current Keras
backend.

Every model's rows are computed by the session's parity worker (`parity_tests/workers.py`: one process per
backend runs the whole plan, `twins_cli.parity.run_model` for each model): the torch twin and the Keras twin,
given the same weights through the bridge and the same batches, each compute their own result, and the tests
assert on the measured errors against the bounds in `twins_cli.parity`. resnet101 and resnet152 share every
line of code with resnet50, so they get the eval-mode checks here and their full matrix from `make parity`
(DESIGN.md, test-time budget)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from parity_tests.conftest import BACKEND, model_params
from parity_tests.mutations import MODEL as MUTATION_MODEL
from twins_cli.parity import QUICK_SUITE, VARIANTS, names

pytestmark = pytest.mark.keras

# What `make test` runs per model, also what `make demo` runs: twins_cli.parity.QUICK_SUITE's entry, or every check
# that applies for a name it leaves out (a pair registered from outside: examples/mobilenet_v2, which make test
# installs).
SUITE = {name: QUICK_SUITE.get(name) for name in names()}
# Checks that do not apply: stage taps exist on the ResNets; the head restore needs a head; the
# running-statistics step needs BatchNorm.
WITH_STAGE_TAPS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "saliency_unet", *VARIANTS]
HEADLESS = ["resnet18-features", "resnet50-deep-dilated"]
WITHOUT_BATCHNORM = ["alexnet", "squeezenet1_0"]
# The optimiser-step rows follow the recipe: Adam for the saliency U-Net (seed 000), SGD for the others.
ADAM = ["saliency_unet"]


def covered(check: str) -> list[str]:
    """The models whose `check` row `make test` computes."""
    applies = {"stage_outputs": lambda n: n in WITH_STAGE_TAPS, "exclude_restore": lambda n: n not in HEADLESS,
               "sgd_step_params": lambda n: n not in ADAM,
               "sgd_step_bn_stats": lambda n: n not in WITHOUT_BATCHNORM and n not in ADAM,
               "adam_step_params": lambda n: n in ADAM,
               "adam_step_bn_stats": lambda n: n in ADAM and n not in WITHOUT_BATCHNORM}.get(check, lambda n: True)
    return [n for n, plan in SUITE.items() if applies(n) and (plan is None or check in plan[0])]


@pytest.fixture(scope="module")
def results(parity_worker):
    """`results(model) -> {check: row}`: the model's rows of its quick plan from the session's worker (resnet18's
    come from the mutation suite's control run, every check at the mutation size: its quick plan's among them)."""

    def rows_of(name: str) -> dict:
        rows = parity_worker.model_rows(name)
        crashed = [r for r in rows if r["check"] == "run"]
        assert not crashed, crashed[0]["detail"]
        if name == MUTATION_MODEL:
            rows = [r for r in rows if r["check"] in SUITE[name][0]]
        return {r["check"]: r for r in rows}

    return rows_of


def assert_row(results, name, check):
    row = results(name)[check]
    assert row["backend"] == BACKEND
    assert row["passed"], f"{name} {check} on {BACKEND}: error {row['error']} > bound {row['bound']}; {row['detail']}"


@model_params(covered("eval_output"))
def test_eval_outputs_match(model_name, results):
    assert_row(results, model_name, "eval_output")


@model_params(covered("stage_outputs"))
def test_every_stage_tap_matches_by_name(model_name, results):
    assert_row(results, model_name, "stage_outputs")
    assert "5 taps: stem, layer1, layer2, layer3, layer4" in results(model_name)["stage_outputs"]["detail"]


@model_params(covered("train_loss"))
def test_train_losses_match(model_name, results):
    assert_row(results, model_name, "train_loss")


@model_params(covered("gradients"))
def test_gradients_match(model_name, results):
    assert_row(results, model_name, "gradients")


@model_params(covered("sgd_step_params"))
def test_two_sgd_momentum_steps_match(model_name, results):
    assert_row(results, model_name, "sgd_step_params")
    if model_name in covered("sgd_step_bn_stats"):
        assert_row(results, model_name, "sgd_step_bn_stats")
    else:
        assert "sgd_step_bn_stats" not in results(model_name)  # no BatchNorm, no row


@model_params(covered("adam_step_params"))
def test_two_adam_steps_match(model_name, results):
    """The saliency recipe's optimiser, torch's Adam (lr 1e-3, betas 0.9/0.99), against `TorchAdam`."""
    assert_row(results, model_name, "adam_step_params")
    assert_row(results, model_name, "adam_step_bn_stats")
    assert "sgd_step_params" not in results(model_name)  # one optimiser's rows per model: the recipe's


@model_params(covered("round_trip"))
def test_bridge_round_trip_is_bit_exact(model_name, results):
    assert_row(results, model_name, "round_trip")
    assert results(model_name)["round_trip"]["error"] == 0.0


@model_params(covered("exclude_restore"))
def test_exclude_final_layer_restore(model_name, results):
    from twins import registry

    assert_row(results, model_name, "exclude_restore")
    heads = registry.get(model_name.split("-")[0]).classifier
    detail = results(model_name)["exclude_restore"]["detail"]
    # A classifier's head is one layer; the saliency U-Net's, the output block conv_0 (conv and its BatchNorm).
    keys = ("conv_0.0.weight, conv_0.1.weight, conv_0.1.bias, conv_0.1.running_mean, conv_0.1.running_var"
            if model_name == "saliency_unet" else ", ".join(f"{h}.weight, {h}.bias" for h in heads))
    assert detail.startswith(f"skipped {keys} into 7 classes")


@model_params(HEADLESS)
def test_headless_variants_have_no_head_to_restore(model_name, results):
    assert "exclude_restore" not in results(model_name)


def test_a_broken_weight_is_named_as_the_first_diverging_layer():
    """Break one BatchNorm of the Keras twin: the diagnosis must name exactly that layer."""
    import keras
    import torch

    import keras_impl
    import torch_impl
    from keras_impl.weights import load_torch_state_dict
    from twins_cli.parity import first_divergence, randomize_batchnorm

    torch.manual_seed(0)
    reference = torch_impl.build("resnet18").eval()
    randomize_batchnorm(reference, 0)
    kmodel = keras_impl.build("resnet18")
    load_torch_state_dict(kmodel, reference.state_dict())
    x = np.random.RandomState(0).randn(1, 3, 64, 64).astype(np.float32)
    assert first_divergence(reference, kmodel, x, 1e-5) is None
    gamma = kmodel.get_layer("layer2-1-bn1").gamma
    gamma.assign(keras.ops.convert_to_numpy(gamma) * 1.01)
    name, err = first_divergence(reference, kmodel, x, 1e-5)
    assert name == "layer2.1.bn1"
    assert err > 1e-3


def test_float32_training_checks_also_run():
    """The float32 variant of the training checks, against DESIGN.md's float32 bounds, on the
    well-conditioned resnet18 (the deep Bottleneck ResNets need float64, see twins_cli/parity/bounds.py)."""
    from twins_cli.parity import FLOAT32_BOUNDS, run_model

    rows = {r.check: r for r in run_model("resnet18", checks=("train_loss", "gradients"), train_dtype="float32")}
    for check in ("train_loss", "gradients"):
        assert rows[check].bound == FLOAT32_BOUNDS[check]
        assert rows[check].passed, rows[check]


def test_float64_switches_are_undone_after_a_run():
    """A float64 run lifts Keras' 32-bit type-promotion cap (and switches JAX to x64); float32 work
    after it in the same process must run as in a fresh process."""
    import keras

    from twins_cli.parity import run_model

    def settings():
        x64 = None
        if BACKEND == "jax":
            import jax

            x64 = bool(jax.config.jax_enable_x64)
        return keras.backend.result_type("float64", "float32"), keras.config.floatx(), x64

    before = settings()
    rows = run_model("resnet18", size=32, checks=("train_loss",))
    assert rows[0].passed and rows[0].meta["train_dtype"] == "float64"
    assert settings() == before


def test_the_session_plan_holds_every_models_quick_plan_heavy_models_first():
    """One worker per backend runs every model's quick plan (resnet18's inside the mutation suite's control run,
    every check at the mutation size), the models whose float64 training holds the most memory first."""
    from parity_tests.mutations import SIZE
    from parity_tests.workers import session_plan
    from twins_cli.parity import CHECKS, jobs, names
    from twins_cli.parity.plan import HEAVY_MODELS

    plan = [job for job in session_plan(BACKEND) if job.optimizer is None and "export_onnx" not in job.checks]
    heavy = [job for job in plan if job.heavy]
    assert plan[:len(heavy)] == heavy
    assert list(dict.fromkeys(job.model for job in heavy)) == list(HEAVY_MODELS)
    by_model = {}
    for job in plan:
        by_model.setdefault(job.model, []).append(job)
    assert set(by_model) == set(names())
    assert all(len(mine) == 1 for model, mine in by_model.items() if model not in HEAVY_MODELS)
    for quick in jobs(names(), CHECKS, quick=True):
        mine = by_model[quick.model]
        assert set(quick.checks) <= {c for job in mine for c in job.checks}, quick.model
        assert {job.size for job in mine} == {SIZE if quick.model == MUTATION_MODEL else quick.size}


def test_the_suite_names_every_registered_model_and_variant():
    """A model registered later is not silently left out of `make test`'s parity rows: QUICK_SUITE names every
    built-in model and variant (a pair registered from outside, which it cannot name, gets every check), and the
    example installed by make test is among the suite's names."""
    from twins import registry

    assert set(QUICK_SUITE) == set(registry.MODELS) - set(registry.PLUGINS) | set(VARIANTS)
    assert set(SUITE) == set(registry.names()) | set(VARIANTS) and "mobilenet_v2" in SUITE
    assert SUITE["mobilenet_v2"] is None


def test_the_quick_run_computes_each_models_plan(results):
    """`twins report --quick` (make demo) runs QUICK_SUITE through the worker, as the session's worker does: resnet34
    gets its eval and stage rows only, saliency_unet every row that applies to it."""
    assert sorted(results("resnet34")) == ["eval_output", "stage_outputs"]
    assert sorted(results("saliency_unet")) == sorted(["eval_output", "stage_outputs", "train_loss", "gradients",
                                                       "adam_step_params", "adam_step_bn_stats", "round_trip",
                                                       "exclude_restore"])


def _fake_spawn(monkeypatch, seconds: dict, log: list):
    """`launch.spawn` replaced by a worker that runs in a thread: it takes the plan's jobs in order through the
    claims folder (`worker.claim`), as the real worker does, each job taking `seconds[backend]`, and writes its
    rows as the real worker does. `log` gets (event, backend, label, running labels, heavy-lock file)."""
    import json
    import threading
    import time

    from twins_cli.parity import launch
    from twins_cli.parity.memory import HEAVY_LOCK_ENV
    from twins_cli.parity.worker import claim

    running, guard = set(), threading.Lock()

    def spawn(backend, plan_file, json_out, *, timeout, log_, env=None, claims=None, label=None):
        plan = json.loads(plan_file.read_text())
        with guard:
            running.add(label)
            log.append(("start", backend, label, set(running), (env or {}).get(HEAVY_LOCK_ENV),
                        (env or {}).get("OMP_NUM_THREADS")))
        rows, done = [], []
        for index, job in enumerate(plan):
            if claim(claims, index):
                time.sleep(seconds[backend])
                rows.append({"backend": backend, "model": job["model"], "worker": label, "job": index})
                done.append(index)
        json_out.write_text(json.dumps({"rows": rows, "done": done}))
        with guard:
            running.discard(label)
        return None

    monkeypatch.setattr(launch, "spawn", lambda *a, log=None, **k: spawn(*a, log_=log, **k))


def test_the_reports_parity_workers_run_side_by_side_under_one_heavy_lock(monkeypatch):
    """`twins report` runs two worker processes at once (`run_parity(parallel=2)`): they overlap, every one gets
    the same heavy-lock file (so one heavy model's float64 copies are in memory at a time), and the rows come
    back in the order of the backends, as they do one after the other."""
    # a user who set no thread counts (this process's own come from conftest: `thread_env`, `share_cores`)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                 "TF_NUM_INTEROP_THREADS", "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    from twins_cli.parity import launch
    from twins_cli.parity.memory import HEAVY_LOCK_ENV

    monkeypatch.delenv(HEAVY_LOCK_ENV, raising=False)
    log = []
    _fake_spawn(monkeypatch, {"tensorflow": 0.15, "jax": 0.05, "torch": 0.05}, log)
    backends = ["tensorflow", "jax", "torch"]
    rows = launch.run_parity(["alexnet", "resnet18"], backends, checks=["round_trip"], parallel=2)
    assert [(r["backend"], r["model"]) for r in rows] == [(b, m) for b in backends for m in ("alexnet", "resnet18")]
    assert max(len(event[3]) for event in log) == 2, log  # two at once, never three
    assert len({event[4] for event in log}) == 1 and log[0][4] is not None
    assert {event[5] for event in log} == {str(max(1, (os.cpu_count() or 1) // 2))}  # each its share of the cores
    monkeypatch.setattr(launch, "run_worker", lambda backend, plan, **_: [{"backend": backend}])
    serial = launch.run_parity(["alexnet"], backends, checks=["round_trip"])
    assert [r["backend"] for r in serial] == backends


def test_workers_sharing_the_cores_get_their_share_of_threads():
    """`thread_env`: every framework's pools sized to the worker's share (torch checked in a process of its own);
    what the user set stays theirs, and XLA's flags are added to theirs."""
    import subprocess
    import sys

    from twins_cli.parity.launch import thread_env

    env = thread_env(1, {})
    assert {env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                             "TF_NUM_INTEROP_THREADS")} == {"1"}
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    mine = thread_env(4, {"OMP_NUM_THREADS": "3", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert mine["OMP_NUM_THREADS"] == "3" and mine["MKL_NUM_THREADS"] == "4"
    assert mine["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=4"
    assert thread_env(2, {"XLA_FLAGS": "intra_op_parallelism_threads=8"})["XLA_FLAGS"] == "intra_op_parallelism_threads=8"
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], text=True,
                         capture_output=True, env={**os.environ, **thread_env(1, {})}, check=True).stdout
    assert out.strip() == "1"


@pytest.mark.skipif(BACKEND != "tensorflow", reason="no Keras: the tensorflow pass only")
def test_the_suite_gives_its_children_the_cores_a_waiting_worker_leaves(tmp_path):
    """A process blocked on the heavy lock says so (a marker file beside the lock, gone once it holds the lock);
    the suite's children get every core when each live worker waits for the lock the pytest process holds, or no
    worker is left, and half while one computes (`conftest.share_cores`)."""
    import subprocess
    import sys
    import time

    from parity_tests.conftest import threads_beside
    from twins_cli.parity.memory import HeavyLock

    assert threads_beside(set(), set(), 2) == 2  # every worker done
    assert threads_beside({11}, {11}, 2) == 2  # the worker waits for this process's heavy lock
    assert threads_beside({11}, set(), 2) == 1  # the worker computes
    assert threads_beside({11, 12}, {11}, 4) == 2  # one of two waits: the other computes
    assert threads_beside({11}, {11}, 1) == 1

    path = str(tmp_path / "lock")
    mine = HeavyLock(path)
    assert mine.acquire() and mine.waiting_pids() == set()
    waiter = subprocess.Popen([sys.executable, "-c", "import sys; from twins_cli.parity.memory import HeavyLock; "
                               "lock = HeavyLock(sys.argv[1]); assert not lock.acquire(blocking=False); "
                               "lock.acquire(); print('held')", path], cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while waiter.pid not in mine.waiting_pids() and time.time() < deadline:
        time.sleep(0.05)
    assert mine.waiting_pids() == {waiter.pid}
    mine.release()
    assert waiter.communicate(timeout=60)[0].strip() == "held" and waiter.returncode == 0
    assert mine.waiting_pids() == set()  # a non-blocking miss leaves no marker, a blocking wait removes its own


def test_the_pytest_process_takes_every_core_for_its_torch_once_no_worker_computes(monkeypatch):
    """`share_cores` sets this process's torch threads too: the tests after the worker's end run torch twins
    in-process on every core, and on their share again while a worker computes beside them."""
    import torch

    from parity_tests import conftest

    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(conftest, "USER_ENV", {})
    monkeypatch.setitem(conftest.SHARE, "threads", None)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(conftest, "WORKERS", {})
        assert conftest.share_cores() == conftest.CORES == torch.get_num_threads()

        class Live:  # a worker still computing
            class proc:
                pid = 11

                @staticmethod
                def poll():
                    return None

        monkeypatch.setattr(conftest, "WORKERS", {"tensorflow": Live})
        assert conftest.share_cores() == max(1, conftest.CORES // 2) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_a_free_slot_helps_the_backend_still_running(monkeypatch):
    """When no backend waits for a slot, a second worker joins the backend with the most jobs not started; the
    two share the claims folder, so each job runs once, and the rows come back in the plan's order. Without
    helpers (`HELP_MIN_JOBS` out of reach) the slow backend's jobs all run in its one worker."""
    from twins_cli.parity import launch

    models = ["resnet18", "resnet34", "resnet50", "alexnet", "vgg11_bn", "squeezenet1_0", "densenet121", "simclr_sl"]
    for min_jobs, helped in ((launch.HELP_MIN_JOBS, True), (len(models) + 1, False)):
        monkeypatch.setattr(launch, "HELP_MIN_JOBS", min_jobs)
        log = []
        _fake_spawn(monkeypatch, {"tensorflow": 0.1, "jax": 0.01}, log)
        rows = launch.run_parity(models, ["tensorflow", "jax"], checks=["round_trip"], parallel=2)
        tf_rows = [r for r in rows if r["backend"] == "tensorflow"]
        assert [r["model"] for r in tf_rows] == models  # each job once, in the plan's order
        workers = {r["worker"] for r in tf_rows}
        if helped:
            assert workers == {"tensorflow", "tensorflow (helper)"}, workers
            starts = [e[2] for e in log if e[0] == "start"]
            assert sorted(starts[:2]) == ["jax", "tensorflow"] and starts[2:] == ["tensorflow (helper)"], starts
        else:
            assert workers == {"tensorflow"}, workers


def test_a_helper_that_fails_leaves_failed_rows_for_the_jobs_it_took(tmp_path):
    """Two workers' files merged: the jobs neither finished get a failed row naming the reason."""
    import json

    from twins_cli.parity import launch
    from twins_cli.parity.plan import jobs

    plan = jobs(["resnet18", "resnet34", "alexnet"], ["round_trip"])
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": [{"model": "alexnet", "check": "round_trip", "passed": True, "job": 2}],
                                 "done": [2]}))
    second.write_text(json.dumps({"rows": [{"model": "resnet18", "check": "round_trip", "passed": True, "job": 0}],
                                  "done": [0]}))
    rows = launch.collect("jax", plan, [first, second], [None, "worker exited -9: Killed"])
    assert [(r["model"], r["passed"]) for r in rows] == [("resnet18", True), ("alexnet", True), ("resnet34", False)]
    assert "worker exited -9" in rows[-1]["detail"]


def test_a_killed_worker_leaves_its_progress_and_says_it_was_killed(monkeypatch, tmp_path):
    """`spawn` passes the worker's progress lines on as they come, so a worker the kernel kills (out of memory)
    leaves in the log the jobs it finished; the reason says it was killed, and a worker that fails says its last
    line; one that runs past the timeout is stopped."""
    import io
    import sys

    from twins_cli.parity import launch

    def fake(script):
        monkeypatch.setattr(launch, "worker_command", lambda *a, **k: ([sys.executable, "-c", script], dict(os.environ)))

    fake("import os, signal, sys; print('[parity] jax: resnet18: 9 rows', file=sys.stderr, flush=True); "
         "print('noise', file=sys.stderr, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    log = io.StringIO()
    reason = launch.spawn("jax", tmp_path / "plan.json", tmp_path / "rows.json", timeout=60, log=log)
    assert reason == "worker killed (SIGKILL; out of memory?)"
    assert log.getvalue().splitlines() == ["[parity] jax: resnet18: 9 rows", f"[parity] jax: FAILED: {reason}"]
    fake("import sys; print('ValueError: bad plan', file=sys.stderr); sys.exit(3)")
    assert launch.spawn("jax", tmp_path / "p", tmp_path / "r", timeout=60, log=io.StringIO()) == \
        "worker exited 3: ValueError: bad plan"
    fake("import time; time.sleep(30)")
    assert launch.spawn("jax", tmp_path / "p", tmp_path / "r", timeout=1, log=io.StringIO()) == \
        "worker timed out after 1 s"


class Processes:
    """A worker's processes as `run_tasks` sees them in these tests: `restart` raises, and `run` makes a new
    `run_tasks` call on the same files for each new process; `ran` lists `(process, task label)` in order."""

    class Restarted(Exception):
        pass

    def __init__(self):
        self.number, self.ran = 0, []

    def task(self, label, fresh=False):
        processes = self

        class Task:
            heavy, fresh_process = False, fresh

            def __init__(self):
                self.label = label

            def run(self, backend):
                processes.ran.append((processes.number, self.label))
                return [{"task": self.label}]

        return Task()

    def restart(self):
        raise self.Restarted

    def run(self, backend, tasks, out, log=None):
        import io

        from twins_cli.parity.worker import run_tasks

        while True:
            try:
                return run_tasks(backend, tasks, str(out), log=log or io.StringIO(), restart=self.restart)
            except self.Restarted:
                self.number += 1


def test_a_fresh_process_task_runs_in_a_process_that_ran_nothing_else(tmp_path):
    """`run_tasks` with `restart`: before a `fresh_process` task, a process that has run a task replaces itself
    (here the restart raises, and a new call on the same files stands for the new process), and the new process
    carries on from the rows file: every task once, in plan order, each fresh task first in its process. Without
    the restart the fourth task would share the process (the control)."""
    import io

    from twins_cli.parity.worker import run_tasks

    processes = Processes()
    tasks = [processes.task("a"), processes.task("b"), processes.task("fit 1", True), processes.task("fit 2", True)]
    rows = processes.run("tensorflow", tasks, tmp_path / "rows.json")
    assert processes.ran == [(0, "a"), (0, "b"), (1, "fit 1"), (2, "fit 2")]
    assert [row["task"] for row in rows] == ["a", "b", "fit 1", "fit 2"]
    control = Processes()
    run_tasks("tensorflow", [control.task(t.label, t.fresh_process) for t in tasks], str(tmp_path / "control.json"),
              log=io.StringIO())
    assert control.ran == [(0, "a"), (0, "b"), (0, "fit 1"), (0, "fit 2")]


def test_the_torch_twins_export_worker_never_waits_for_the_heavy_lock_to_do_nothing():
    """A heavy model's job without a torch export check computes nothing on `torch_impl`: it is light there (it
    stays heavy where it has export checks, and on the Keras backends)."""
    from twins_cli.parity import TORCH_TWIN
    from twins_cli.parity.plan import jobs
    from twins_cli.parity.worker import for_backend

    plan = jobs(["pspnet", "vgg11_bn", "resnet18"], ["eval_output", "export_onnx"], quick=True)
    assert [(job.model, job.heavy) for job in plan] == [("pspnet", True), ("vgg11_bn", True), ("resnet18", False)]
    assert [job.heavy for job in for_backend(plan, TORCH_TWIN)] == [False, False, False]
    assert for_backend(plan, "jax") == plan
    full = jobs(["pspnet"], ["eval_output", "export_onnx"])
    assert [(job.part, job.heavy) for job in for_backend(full, TORCH_TWIN)] == [("eval", False), ("exports", True)]


def test_a_heavy_models_checks_run_as_one_job_per_part_and_its_rows_come_back_in_the_checks_order(tmp_path):
    """In the full plan vgg11_bn's eval-mode checks, float64 training checks and exports are three heavy jobs, so a
    worker holding what one part left hands the next part to a fresh process (`make parity`'s single vgg11_bn job
    peaked at 17.5 GiB in its ONNX export, on top of the 7.7 GiB its training left); a light model stays one job;
    the rows of the parts come back as one model's, in the order of the checks."""
    from twins_cli.parity import ALL_CHECKS, EXPORT_CHECKS, TRAIN_CHECKS, jobs
    from twins_cli.parity.launch import collect
    from twins_cli.parity.plan import Job

    plan = jobs(["vgg11_bn", "resnet18"], ALL_CHECKS)
    assert [(job.label, job.heavy) for job in plan] == [
        ("vgg11_bn (eval)", True), ("vgg11_bn (training)", True), ("vgg11_bn (exports)", True), ("resnet18", False)]
    assert set(plan[1].checks) == set(TRAIN_CHECKS) and plan[2].checks == EXPORT_CHECKS
    assert set(plan[0].checks) == set(ALL_CHECKS) - set(TRAIN_CHECKS) - set(EXPORT_CHECKS)
    assert [Job.from_json(job.to_json()) for job in plan] == plan
    # the quick plan (make test, make demo) keeps a heavy model's checks in one job
    assert [(job.label, job.heavy) for job in jobs(["pspnet", "vgg11_bn"], ALL_CHECKS, quick=True)] == [
        ("pspnet", True), ("vgg11_bn", True)]

    out = tmp_path / "rows.json"  # the training part finished last, as a helper may leave it
    ran = [(2, "export_onnx"), (0, "eval_output"), (0, "round_trip"), (3, "eval_output"), (1, "train_loss")]
    out.write_text(json.dumps({"done": [0, 1, 2, 3], "rows": [
        {"model": plan[job].model, "check": check, "job": job} for job, check in ran]}))
    rows = collect("jax", plan, [out], [None])
    assert [(r["model"], r["check"]) for r in rows] == [
        ("vgg11_bn", "eval_output"), ("vgg11_bn", "train_loss"), ("vgg11_bn", "round_trip"),
        ("vgg11_bn", "export_onnx"), ("resnet18", "eval_output")]


def test_the_pass_summary_names_a_workers_slowest_tasks_from_its_progress_lines(tmp_path):
    """The session worker's progress lines (`run_tasks`) are what the pass's summary reads its slowest tasks from
    (`parity_tests.workers.task_times`): every task's label and seconds, a failed one's too, and not the
    worker's closing line."""
    import io

    from parity_tests.workers import task_times
    from twins_cli.parity.worker import run_tasks

    class Task:
        heavy = False

        def __init__(self, label, passed):
            self.label, self.passed = label, passed

        def run(self, backend):
            return [{"check": "eval_output", "passed": self.passed}]

    log = io.StringIO()
    run_tasks("tensorflow", [Task("recipe parity, segmentation", True), Task("resnet18", False)],
              str(tmp_path / "rows.json"), log=log)
    tasks = task_times(log.getvalue().splitlines())
    assert [label for label, _ in tasks] == ["recipe parity, segmentation", "resnet18"]
    assert all(0 <= seconds < 60 for _, seconds in tasks)


def test_a_worker_holding_too_much_after_a_job_hands_the_rest_to_a_fresh_process(tmp_path, monkeypatch):
    """`run_tasks` with `restart`: after a job, a process resident above `TWINS_PARITY_RESTART_GIB` replaces itself
    (here the restart raises, and a new call on the same files stands for the new process), and the new one carries
    on from the rows file, every job once; below the limit (the default 6 GiB, above this process) nothing
    restarts."""
    import io

    kept = Processes()
    kept.run("jax", [kept.task(label) for label in "abc"], tmp_path / "kept.json")
    assert kept.ran == [(0, "a"), (0, "b"), (0, "c")]
    monkeypatch.setenv("TWINS_PARITY_RESTART_GIB", "0")
    processes, log = Processes(), io.StringIO()
    rows = processes.run("jax", [processes.task(label) for label in "abc"], tmp_path / "rows.json", log=log)
    assert processes.ran == [(0, "a"), (1, "b"), (2, "c")]
    assert [row["task"] for row in rows] == ["a", "b", "c"]
    assert log.getvalue().count("the next job starts in a fresh process") == 2
