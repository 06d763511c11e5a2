"""The GPU table's rehearsal in `make test`: `python -m benchmarks.gpu run --profile rehearsal` for one model, part 1
then the parts after it (as two loans would run them), on this CPU at toy sizes, as a background process of the
tensorflow pass.

It starts once the session's workers have finished (conftest's `pytest_runtest_setup`, at the first test of rank 3,
or when its test asks for it), so that it computes beside the last in-process tests rather than beside the parity
workers, and its test runs last and waits for it. alexnet: the registered model with the fewest layers (21), so
its compilations are the shortest; the test's rehearsal compiles with dynamo's `eager` backend and each frame once
(`benchmarks.worker.setup_torch`: the same graph capture, no autograd split or code generation; `make
bench-gpu-rehearse` compiles with inductor, as the GPU run does), takes one warm-up and one timed step per row,
and keeps two workers alive at a time (as the GPU run keeps six).
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `make test` sets it for its tensorflow pass (and `make test-gpu-rehearsal` for the rehearsal's test alone). It was
# left out of make test from 91615c6 while the passes were over DESIGN.md's 25 minutes; since the fast-feedback
# cuts (0035762 to f67fc89) the passes leave room for it: docs/tests.md, docs/tests.md "Measured".
ENV = "TWINS_GPU_REHEARSAL"
MODEL = "alexnet"
COMPILE_BACKEND = "eager"
TIMEOUT_S = 1200
# The parts' length for the rehearsal's plan: the GPU cost model puts alexnet's whole plan in one 8-minute part; in
# 90-second parts it has two (every path, then the latency rows chosen from them), so both runs and `--previous`
# are rehearsed.
PART_S = 90


class Rehearsal:
    def __init__(self):
        self.out = Path(tempfile.mkdtemp(prefix="twins-gpu-rehearsal-"))
        self.proc: subprocess.Popen | None = None
        self.started = self.ended = None

    def command(self, part: str, out: str, previous: str | None = None) -> list[str]:
        return [sys.executable, "-m", "benchmarks.gpu", "run", "--profile", "rehearsal", "--models", MODEL,
                "--part", part, "--part-seconds", str(PART_S), "--compile-backend", COMPILE_BACKEND,
                "--side-by-side", "2", "--out", str(self.out / out)] + (["--previous", previous] if previous else [])

    def script(self) -> str:
        """Part 1 into part1/, then the parts after it into rest/, reading part 1's gpu.json: as two loans would."""
        first = self.command("1", "part1")
        rest = self.command("2-", "rest", str(self.out / "part1" / "gpu.json"))
        return " && ".join(shlex.join(command) for command in (first, rest))

    def start(self) -> None:
        if self.proc is not None:
            return
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.log = open(self.out / "rehearsal.log", "w")
        self.started = time.monotonic()
        # at the lowest priority: the pytest process's tests come first, the rehearsal takes what they leave idle (they
        # keep their share of the cores, `conftest.share_cores`); a session of its own, so `close` ends its workers
        self.proc = subprocess.Popen(["nice", "-n", "19", "sh", "-c", self.script()], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> tuple[int, str]:
        self.start()
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            code = self.proc.returncode
        if self.ended is None:
            self.ended = time.monotonic()
        if not self.log.closed:
            self.log.close()
        return code, (self.out / "rehearsal.log").read_text()

    def close(self) -> None:
        """Ends a rehearsal still running (a stopped session: SIGTERM, which `benchmarks.gpu` turns into ending its
        workers, each in a process group of its own), then removes its folder."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.out, ignore_errors=True)
