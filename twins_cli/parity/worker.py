"""The parity worker: every job of a plan on one backend, in one process (`python -m twins_cli.parity`).

A Keras backend is fixed when keras is first imported, so each backend gets a process of its own; within it the
frameworks are imported once, and each model's checks run one after another on that model's twins
(`run_model`). After each job the rows so far are written to `--json-out` (atomically), so a worker that dies
keeps the rows of the jobs it finished, and a progress line goes to stderr: the job's rows, its seconds and the
process's peak memory so far.

`run_tasks` takes any task with `label`, `heavy` and `run(backend) -> list[dict]` (a parity `Job`, or the test
suite's recipe-parity tasks, which share the process). A heavy task runs in the heavy section
(`memory.HeavyLock`); while another process holds it, the worker runs its light tasks first.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable

from twins import checkpoints
from twins_cli.compile_cache import JaxCacheCounter

from .bounds import ALL_CHECKS, BACKENDS, TORCH_TWIN
from .memory import PARITY_ENV, HeavyLock, freeze_between_models, resident_gib
from .plan import Job, jobs


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare_process(backend: str) -> JaxCacheCounter | None:
    """Import the frameworks once and keep what the imports made out of every later garbage collection (0.2 s a
    collection on jax otherwise, after every model); on jax, count the persistent compile cache's hits."""
    if backend != TORCH_TWIN:
        import keras  # noqa: F401
    import torch  # noqa: F401

    gc.collect()
    gc.freeze()
    return JaxCacheCounter.install() if backend == "jax" else None


def next_task(tasks, pending: list[int], lock: HeavyLock) -> int:
    """The first pending heavy task if the heavy lock is free now (taken), else the first light one, else the
    first heavy one once the lock is free (waited for)."""
    for i in pending:
        if tasks[i].heavy and lock.acquire(blocking=False):
            return i
    for i in pending:
        if not tasks[i].heavy:
            return i
    lock.acquire()
    return pending[0]


def claim(claims: Path | None, index: int) -> bool:
    """Take task `index` for this process: True unless another process sharing `claims` (a folder) took it
    first. Without `claims` every task is this process's."""
    if claims is None:
        return True
    try:
        os.close(os.open(claims / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_tasks(backend: str, tasks: list, json_out: str, log=sys.stderr, claims: Path | None = None,
              restart: Callable[[], None] | None = None) -> list[dict]:
    """Run `tasks` in this process (its Keras backend already `backend`); after each, write every row so far
    (each with its task's index, `job`) and the indices done. With `claims`, a task another process claimed
    (`claim`) is left to it: the test suite's pytest process computes a light task itself rather than wait.

    A task with a true `fresh_process` runs in a process that has run nothing else: with `restart` (which
    replaces this process with a new one on the same arguments, `os.execv`), a process that has run a task calls
    it first, and the new process carries on from what `json_out` says is done (tensorflow's fit keeps ~1 GB of
    each recipe run in the process that ran it: the session worker's last recipe peaked at 5.0 GiB after three
    others, 1.96 GiB alone). With `restart`, a process that still holds more than `restart_above_gib()` after a
    task (what the frameworks keep of the models it ran: `make parity`'s jax worker grew to 16.5 GiB by its
    thirteenth model, what it keeps is not diagnosed) is replaced the same way."""
    counter = prepare_process(backend)
    lock = HeavyLock()
    written = json.loads(Path(json_out).read_text()) if Path(json_out).is_file() else {}
    rows: list[dict] = written.get("rows", [])
    done: list[int] = written.get("done", [])
    pending = [i for i in range(len(tasks)) if i not in done]
    start, ran_here = written.get("started", time.time()), 0
    lock_wait = written.get("lock_wait", 0.0)  # seconds spent with nothing to run but a heavy task, lock taken
    while pending:
        asked = time.time()
        index = next_task(tasks, pending, lock)
        lock_wait += time.time() - asked
        task = tasks[index]
        if restart is not None and ran_here and getattr(task, "fresh_process", False):
            if task.heavy:
                lock.release()
            log.flush()
            restart()
        pending.remove(index)
        if not claim(claims, index):
            if task.heavy:
                lock.release()
            continue
        began = time.time()
        try:
            new = task.run(backend)
        finally:
            if task.heavy:
                lock.release()
        done.append(index)
        ran_here += 1
        rows += [{**row, "job": index} for row in new]
        checkpoints.write_atomic(json_out, lambda tmp: tmp.write_text(json.dumps({"rows": rows, "done": done,
                                                                                   "started": start,
                                                                                   "lock_wait": lock_wait})))
        failed = [r["check"] for r in new if "check" in r and not r["passed"] and r.get("supported", True)]
        print(f"[parity] {backend}: {task.label}: {len(new)} rows" + (f", FAILED {', '.join(failed)}" if failed else "")
              + f" in {time.time() - began:.1f} s (peak memory so far {peak_rss_gib():.2f} GiB)", file=log, flush=True)
        if restart is not None and pending and (held := resident_gib()) > restart_above_gib():
            print(f"[parity] {backend}: {held:.2f} GiB still resident after {task.label}: the next job starts in a "
                  f"fresh process", file=log, flush=True)
            restart()
    summary = (f"[parity] {backend}: {len(done)} jobs" + (f" ({len(tasks) - len(done)} taken by another process)"
                                                         if len(done) < len(tasks) else "")
               + f", {len(rows)} rows in {time.time() - start:.0f} s"
               + (f" ({lock_wait:.0f} s of it waiting for the heavy lock)" if lock_wait >= 1 else ""))
    if counter is not None:
        summary += f"; {counter.describe()}"
    print(summary, file=log, flush=True)
    return rows


# A parity process that holds more than this after a job hands the rest of its plan to a fresh process (`run_tasks`):
# above what any job of `make test` or `make demo` leaves behind (their workers peak at 4-5 GiB), so only `make
# parity`'s long plans restart. TWINS_PARITY_RESTART_GIB sets another.
RESTART_ABOVE_GIB = 6.0


def restart_above_gib() -> float:
    return float(os.environ.get("TWINS_PARITY_RESTART_GIB", RESTART_ABOVE_GIB))


def set_parity_env() -> None:
    """The parity processes' environment (`memory.PARITY_ENV`), unless the user set it: before tensorflow is
    imported, which reads it."""
    for name, value in PARITY_ENV.items():
        os.environ.setdefault(name, value)


def worker_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twins_cli.parity")
    parser.add_argument("--backend", required=True, choices=BACKENDS + (TORCH_TWIN,))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", action="append", help="a model or variant (repeat for several)")
    what.add_argument("--plan", help="a JSON list of jobs (`twins_cli.parity.plan.Job`)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--checks", default=",".join(ALL_CHECKS))
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--quick", action="store_true", help="each model's QUICK_SUITE plan")
    parser.add_argument("--claims", help="a folder shared with other workers of this backend and plan: each job "
                                         "runs in the worker that claims it first (`claim`)")
    args = parser.parse_args(argv)
    if args.backend != TORCH_TWIN and os.environ.get("KERAS_BACKEND") != args.backend:
        print(f"KERAS_BACKEND must be {args.backend!r} before keras is imported", file=sys.stderr)
        return 2
    set_parity_env()
    freeze_between_models()  # a process of its own: nothing outlives a model but what the next one reuses
    if args.plan:
        plan = [Job.from_json(j) for j in json.loads(Path(args.plan).read_text())]
    else:
        checks = tuple(c for c in args.checks.split(",") if c)
        plan = jobs(args.model, checks, quick=args.quick, size=args.size, batch=args.batch)
    argv = sys.argv[1:] if argv is None else argv

    def restart():  # this process, replaced by a new one on the same arguments: it carries on from --json-out
        os.execv(sys.executable, [sys.executable, "-m", "twins_cli.parity", *argv])

    run_tasks(args.backend, for_backend(plan, args.backend), args.json_out,
              claims=Path(args.claims) if args.claims else None, restart=restart)
    return 0


def for_backend(plan: list[Job], backend: str) -> list[Job]:
    """The plan as `backend` runs it: on the torch twin's export worker (`torch_impl`) a job with no torch export
    check computes nothing, so it is not heavy (it waited for the heavy lock to do nothing: `make demo`'s export
    worker spent 19 of its 25 s on four such jobs while the other workers' heavy jobs ran)."""
    from dataclasses import replace

    from .bounds import TORCH_EXPORT_CHECKS

    if backend != TORCH_TWIN:
        return plan
    return [job if set(job.checks) & set(TORCH_EXPORT_CHECKS) else replace(job, heavy=False) for job in plan]
