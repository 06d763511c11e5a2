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

from .bounds import BACKENDS, TORCH_TWIN
from .plan import Job, jobs
from .rows import failed_row


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def worker_command(backend: str, plan_file: Path, json_out: Path, env: dict | None = None) -> tuple[list[str], dict]:
    """The worker's command line and environment for `backend` (the torch twin's exports: no KERAS_BACKEND)."""
    cmd = [sys.executable, "-m", "twins_cli.parity", "--backend", backend, "--plan", str(plan_file),
           "--json-out", str(json_out)]
    env = {**os.environ, **(env or {}), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == TORCH_TWIN:
        env.pop("KERAS_BACKEND")
    return cmd, env


def collect(backend: str, plan: list[Job], json_out: Path, reason: str | None) -> list[dict]:
    """The rows a worker wrote, and a failed row (saying `reason`) for each job it did not finish."""
    written = json.loads(json_out.read_text()) if json_out.is_file() else {"rows": [], "done": []}
    rows = sorted(written["rows"], key=lambda row: row["job"])  # in the plan's order, whichever ran first
    rows = [{k: v for k, v in row.items() if k != "job"} for row in rows]
    missing = [job for i, job in enumerate(plan) if i not in written["done"]]
    if missing:
        reason = reason or f"the worker stopped after {len(written['done'])} of {len(plan)} jobs"
        rows += [failed_row(job.model, backend, reason) for job in missing]
    return rows


def run_worker(backend: str, plan: list[Job], *, timeout=1800, log=sys.stderr, env: dict | None = None) -> list[dict]:
    """Run `plan` on `backend` in a worker subprocess (`env`: added to its environment) and return its rows (its
    progress lines go to `log`)."""
    if backend not in installed_backends() + [TORCH_TWIN]:
        return [failed_row(job.model, backend, f"{backend} is not installed") for job in plan]
    with tempfile.TemporaryDirectory() as tmp:
        plan_file, out = Path(tmp) / "plan.json", Path(tmp) / "rows.json"
        plan_file.write_text(json.dumps([job.to_json() for job in plan]))
        cmd, env = worker_command(backend, plan_file, out, env)
        print(f"[parity] {backend}: {', '.join(job.model for job in plan)} ...", file=log, flush=True)
        start = time.time()
        reason = None
        try:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=timeout)
            progress = [line for line in proc.stderr.splitlines() if line.startswith("[parity]")]
            print("\n".join(progress), file=log, flush=True)
            if proc.returncode != 0:
                reason = f"worker exited {proc.returncode}: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
        except subprocess.TimeoutExpired:
            reason = f"worker timed out after {timeout} s"
        rows = collect(backend, plan, out, reason)
    if reason is None:
        print(f"[parity] {backend}: done in {time.time() - start:.0f} s", file=log, flush=True)
    else:
        print(f"[parity] {backend}: FAILED: {reason}", file=log, flush=True)
    return rows


def run_parity(models, backends, *, batch=2, size=None, checks=None, quick=False, timeout=1800,
               log=sys.stderr, parallel: int = 1) -> list[dict]:
    """Run the parity worker for `models` once per backend. `quick`: each model's QUICK_SUITE plan (and
    QUICK_EXPORTS). `backends` may hold `torch_impl`, the torch twin's export rows. `parallel`: how many
    backends' workers run at once (each mostly keeps one core busy); they share one `HeavyLock`, so at most one
    of them runs a heavy job at a time. The rows come back in the order of `backends` either way."""
    from concurrent.futures import ThreadPoolExecutor

    from .bounds import ALL_CHECKS
    from .memory import HEAVY_LOCK_ENV

    plan = jobs(models, tuple(checks) if checks else ALL_CHECKS, quick=quick, size=size, batch=batch)
    if parallel <= 1:
        return [row for backend in backends for row in run_worker(backend, plan, timeout=timeout, log=log)]
    with tempfile.TemporaryDirectory() as tmp:
        lock = os.environ.get(HEAVY_LOCK_ENV) or str(Path(tmp) / "heavy.lock")
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(run_worker, backend, plan, timeout=timeout, log=log, env={HEAVY_LOCK_ENV: lock})
                       for backend in backends]
            return [row for future in futures for row in future.result()]
