"""The GPU table's rehearsal in `make test`: `python -m benchmarks.gpu run --profile rehearsal` for one model, every
part of its plan, on this CPU at toy sizes, as a background process of the tensorflow pass.

It starts once the session's workers have finished (conftest's `pytest_runtest_setup`, at the first test of rank 3,
or when its test asks for it), so that it computes beside the last in-process tests rather than beside the parity
workers, and its test runs last and waits for it. alexnet: the registered model with the fewest layers (21), so
its compilations are the shortest; the test's rehearsal compiles with dynamo's `aot_eager` backend (the same graph
capture and autograd split, no inductor code generation: `make bench-gpu-rehearse` compiles with inductor, as the
GPU run does), and keeps one worker alive at a time (the pass's memory budget).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "alexnet"
COMPILE_BACKEND = "aot_eager"
TIMEOUT_S = 1200


class Rehearsal:
    def __init__(self):
        self.out = Path(tempfile.mkdtemp(prefix="twins-gpu-rehearsal-"))
        self.proc: subprocess.Popen | None = None
        self.started = self.ended = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.gpu", "run", "--profile", "rehearsal", "--models", MODEL,
                "--part", "all", "--compile-backend", COMPILE_BACKEND, "--side-by-side", "1",
                "--out", str(self.out / "out")]

    def start(self) -> None:
        if self.proc is not None:
            return
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.log = open(self.out / "rehearsal.log", "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.nice(5))  # the pytest process's tests come first

    def wait(self) -> tuple[int, str]:
        self.start()
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.ended is None:
            self.ended = time.monotonic()
        self.log.close()
        return code, (self.out / "rehearsal.log").read_text()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.out, ignore_errors=True)
