"""Running the parity worker: one subprocess per backend (`python -m twins_cli.parity`), its rows collected.

A backend that cannot run yields rows with `passed: False` and the reason, rather than vanishing; a worker that
dies keeps the rows of the jobs it finished, and every job it did not finish gets a failed row that says why.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bounds import ALL_CHECKS, BACKENDS, TORCH_TWIN
from .plan import Job, jobs
from .rows import failed_row


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def thread_env(threads: int, environ=os.environ) -> dict:
    """The environment that gives each framework of a worker `threads` compute threads (torch and numpy's OpenMP
    and BLAS pools, tensorflow's intra- and inter-op pools, XLA's CPU pool), for workers sharing the cores. Each
    framework sizes its pools to every core otherwise: two parity workers on 2 cores ran 4 busy threads (the
    quick plan's tensorflow and jax workers side by side: 236 and 252 s; one thread each: 187 and 191 s; two
    torch workers side by side spent 233 s on what one alone did in 141 s). The user's own settings win (the
    XLA flags are added to theirs)."""
    n = str(threads)
    env = {name: environ.get(name, n) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                  "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
    xla = f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'} intra_op_parallelism_threads={n}"
    user = environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = user if "intra_op_parallelism_threads" in user else f"{user} {xla}".strip()
    return env


def worker_command(backend: str, plan_file: Path, json_out: Path, env: dict | None = None) -> tuple[list[str], dict]:
    """The worker's command line and environment for `backend` (the torch twin's exports: no KERAS_BACKEND)."""
    cmd = [sys.executable, "-m", "twins_cli.parity", "--backend", backend, "--plan", str(plan_file),
           "--json-out", str(json_out)]
    env = {**os.environ, **(env or {}), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == TORCH_TWIN:
        env.pop("KERAS_BACKEND")
    return cmd, env


def collect(backend: str, plan: list[Job], outputs: list[Path], reasons: list[str | None]) -> list[dict]:
    """The rows the workers of `backend` wrote (one worker's file, or a worker's and its helper's, each job in one
    of them), in the plan's order, and a failed row (saying why) for each job none of them finished."""
    rows, done = [], set()
    for out in outputs:
        written = json.loads(out.read_text()) if out.is_file() else {"rows": [], "done": []}
        rows += written["rows"]
        done |= set(written["done"])
    rows = sorted(rows, key=lambda row: row["job"])  # in the plan's order, whichever ran first
    # a model's rows in the order of the checks, its parts' jobs (`plan.PARTS`) together
    first = {}
    for row in rows:
        first.setdefault(row["model"], row["job"])
    order = {check: i for i, check in enumerate(ALL_CHECKS)}
    rows.sort(key=lambda row: (first[row["model"]], order.get(row.get("check"), len(order))))
    rows = [{k: v for k, v in row.items() if k != "job"} for row in rows]
    missing = [job for i, job in enumerate(plan) if i not in done]
    if missing:
        reason = "; ".join(r for r in reasons if r) or f"the worker stopped after {len(done)} of {len(plan)} jobs"
        rows += [failed_row(job.model, backend, reason) for job in missing]
    return rows


def spawn(backend: str, plan_file: Path, json_out: Path, *, timeout, log, env: dict | None = None,
          claims: Path | None = None, label: str | None = None) -> str | None:
    """One worker process for `backend` on the plan in `plan_file` (with `claims`: taking only the jobs no other
    worker sharing the folder took); its progress lines go to `log` as the worker prints them, so a worker that
    is killed (by the kernel's out-of-memory killer, say) leaves the log saying which job it had started. Returns
    why it failed, or None."""
    import collections
    import signal
    import threading

    label = label or backend
    cmd, env = worker_command(backend, plan_file, json_out, env)
    if claims is not None:
        cmd += ["--claims", str(claims)]
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timed_out = threading.Event()
    timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
    timer.start()
    other = collections.deque(maxlen=1)  # the last line that is not progress: the error, if it fails
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            if line.startswith("[parity]"):
                print(line, file=log, flush=True)
            elif line.strip():
                other.append(line.strip())
        code = proc.wait()
    finally:
        timer.cancel()
    reason = None
    if timed_out.is_set():
        reason = f"worker timed out after {timeout} s"
    elif code == -signal.SIGKILL:
        reason = "worker killed (SIGKILL; out of memory?)"
    elif code != 0:
        reason = f"worker exited {code}: " + (other[-1] if other else "?")
    if reason is None:
        print(f"[parity] {label}: done in {time.time() - start:.0f} s", file=log, flush=True)
    else:
        print(f"[parity] {label}: FAILED: {reason}", file=log, flush=True)
    return reason


def write_plan(plan: list[Job], path: Path) -> Path:
    path.write_text(json.dumps([job.to_json() for job in plan]))
    return path


def run_worker(backend: str, plan: list[Job], *, timeout=1800, log=sys.stderr, env: dict | None = None) -> list[dict]:
    """Run `plan` on `backend` in a worker subprocess (`env`: added to its environment) and return its rows (its
    progress lines go to `log`)."""
    if backend not in installed_backends() + [TORCH_TWIN]:
        return [failed_row(job.model, backend, f"{backend} is not installed") for job in plan]
    with tempfile.TemporaryDirectory() as tmp:
        plan_file, out = write_plan(plan, Path(tmp) / "plan.json"), Path(tmp) / "rows.json"
        print(f"[parity] {backend}: {', '.join(job.model for job in plan)} ...", file=log, flush=True)
        reason = spawn(backend, plan_file, out, timeout=timeout, log=log, env=env)
        return collect(backend, plan, [out], [reason])


# A worker whose backend has at least this many jobs no worker has started gets a helper when a slot frees up
# (`run_shared`); fewer would not repay the helper's start (importing the frameworks: 5-10 s).
HELP_MIN_JOBS = 3


def run_shared(plan: list[Job], backends, *, parallel: int, timeout=1800, log=sys.stderr,
               env: dict | None = None) -> list[dict]:
    """Run `plan` on each of `backends` with `parallel` worker processes at a time: the backends' workers in
    order, and once none is waiting, a second worker (a helper) for a backend still running, which takes the
    jobs its first worker has not started (the two share a claims folder, `worker.claim`). The slots stay busy
    until the last backend's jobs are done: `make demo`'s four workers took 267 + 168 s on one slot against
    347 + 31 s on the other when each backend had one. Every worker gets the same `HeavyLock` file, so at most
    one of them runs a heavy job at a time, and its share of the cores (`thread_env`). The rows come back in
    the order of `backends`, each backend's in the plan's order. `env`: added to every worker's environment."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .memory import HEAVY_LOCK_ENV

    present = set(installed_backends() + [TORCH_TWIN])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**(env or {}), HEAVY_LOCK_ENV: os.environ.get(HEAVY_LOCK_ENV) or str(tmp / "heavy.lock"),
               **thread_env(max(1, (os.cpu_count() or 1) // parallel))}
        plan_file = write_plan(plan, tmp / "plan.json")
        queue = [b for b in backends if b in present]
        outputs: dict[str, list[Path]] = {b: [] for b in queue}
        reasons: dict[str, list[str | None]] = {b: [] for b in queue}
        running: dict = {}  # future -> backend

        def unstarted(backend: str) -> int:
            return len(plan) - len(list((tmp / f"claims-{backend}").iterdir()))

        with ThreadPoolExecutor(max_workers=parallel) as pool:

            def start(backend: str) -> None:
                claims = tmp / f"claims-{backend}"
                claims.mkdir(exist_ok=True)
                out = tmp / f"rows-{backend}-{len(outputs[backend])}.json"
                label = backend if not outputs[backend] else f"{backend} (helper)"
                if outputs[backend]:
                    print(f"[parity] {label}: a second worker takes the {unstarted(backend)} jobs not started yet",
                          file=log, flush=True)
                else:
                    print(f"[parity] {backend}: {', '.join(job.model for job in plan)} ...", file=log, flush=True)
                outputs[backend].append(out)
                running[pool.submit(spawn, backend, plan_file, out, timeout=timeout, log=log, env=env,
                                    claims=claims, label=label)] = backend

            while queue and len(running) < parallel:
                start(queue.pop(0))
            while running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    reasons[running.pop(future)].append(future.result())
                while queue and len(running) < parallel:
                    start(queue.pop(0))
                # a free slot and nothing waiting: help the running backend with the most jobs not started (the
                # torch twin's export worker is not helped: its jobs are a few export rows and many empty ones)
                candidates = [b for b in set(running.values()) if b != TORCH_TWIN and len(outputs[b]) == 1
                              and unstarted(b) >= HELP_MIN_JOBS]
                if len(running) < parallel and candidates:
                    start(max(candidates, key=unstarted))
        rows = []
        for backend in backends:
            if backend in outputs:
                rows += collect(backend, plan, outputs[backend], reasons[backend])
            else:
                rows += [failed_row(job.model, backend, f"{backend} is not installed") for job in plan]
        return rows


# A worker's time limit when the caller sets none: this much per job of its plan. It is there to stop a hung
# worker, not to bound the run: `make parity`'s tensorflow worker spends 7-8 minutes on vgg11_bn's ONNX export
# alone (tf2onnx re-serialises its 0.4 GB fc6 constant in every optimiser pass), and ran into the fixed 1800 s
# a worker had before.
JOB_TIMEOUT = 900


def default_backends(checks=None) -> list[str]:
    """The backends of a parity run that names none: every installed Keras backend, and the torch twin's own export
    rows (`TORCH_TWIN`) when the checks (None: all) include one of its exports."""
    from .bounds import TORCH_EXPORT_CHECKS, TORCH_TWIN

    backends = installed_backends()
    if checks is None or set(checks) & set(TORCH_EXPORT_CHECKS):
        backends.append(TORCH_TWIN)
    return backends


def run_parity(models, backends, *, batch=2, size=None, checks=None, quick=False, timeout: float | None = None,
               log=sys.stderr, parallel: int = 1, keep_exports: str | None = None) -> list[dict]:
    """Run the parity worker for `models` once per backend. `quick`: each model's QUICK_SUITE plan (and
    QUICK_EXPORTS). `backends` may hold `torch_impl`, the torch twin's export rows. `parallel`: how many worker
    processes run at once (each mostly keeps one core busy; `run_shared`). `timeout`: seconds per worker (None:
    `JOB_TIMEOUT` per job of the plan). `keep_exports`: a folder where the workers leave each export artifact
    that passed its check, with its report (`exports.KEEP_EXPORTS_ENV`). The workers record the torch twin's
    training steps once per model for all of them (`store.Recordings`). The rows come back in the order of
    `backends` either way."""
    from .exports import KEEP_EXPORTS_ENV
    from .store import RECORDINGS_ENV

    plan = jobs(models, tuple(checks) if checks else ALL_CHECKS, quick=quick, size=size, batch=batch)
    timeout = timeout if timeout is not None else JOB_TIMEOUT * max(1, len(plan))
    env = {KEEP_EXPORTS_ENV: str(Path(keep_exports).resolve())} if keep_exports else {}
    # The torch twin's training recordings, shared by this run's workers (`store.Recordings`), unless the caller
    # shares a folder already (`make test`'s three passes)
    with tempfile.TemporaryDirectory(prefix="twins-recordings-") as recordings:
        env[RECORDINGS_ENV] = os.environ.get(RECORDINGS_ENV) or recordings
        if parallel <= 1:
            return [row for backend in backends
                    for row in run_worker(backend, plan, timeout=timeout, log=log, env=env)]
        return run_shared(plan, backends, parallel=parallel, timeout=timeout, log=log, env=env)
