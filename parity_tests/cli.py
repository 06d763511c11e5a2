"""Running the `twins` command from the tests: as a user does (a new process, `python -m twins_cli.main`), or,
for a command line that is refused before any model is built, in the pytest process.

A `twins` process pays the interpreter start and the framework imports (2-5 s) before it reads its arguments;
the suite's fifty-odd refusals ("below resnet18's smallest input size", "--betas are Adam's") paid that each.
`refused(...)` runs the same `twins_cli.main.main` in this process and returns what a process would have: the
exit status (argparse's 2, a `SystemExit` message's 1) and the two streams. Every command the refusals exercise
also runs end to end in a process of its own in some test.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from parity_tests.conftest import BACKEND
from twins_cli.parity.memory import PARITY_ENV

ROOT = Path(__file__).resolve().parent.parent


# The Keras backend of the `twins` processes that a backend-free test starts (the tensorflow pass's end-to-end runs of
# the CLI, marked "backend-free" where they skip the other passes): Keras on torch, the cheapest to start and to run
# a few steps on (no tensorflow import, no graph traced: pspnet's Keras training run at 17 px took 30 s there, 69 s
# on tensorflow). Keras' fit on each backend is the recipe-parity tests' subject, and a `twins train` process on
# each backend the killed-run tests' (`test_train.py`).
BACKEND_FREE = "torch"


def user_env(lean: bool = False, backend: str | None = None) -> dict:
    """The environment of a `twins` command the tests start: `backend` (default: this pass's Keras backend), and
    tensorflow with its defaults as a user has it, or with `lean` as the suite's own processes run it (without
    oneDNN, whose pool keeps its high-water mark, `twins_cli.parity.memory.PARITY_ENV`: vgg19_slim's Keras
    training from the slim checkpoint peaked at 5.6 GB with it, 4.1 GB without)."""
    env = {k: v for k, v in os.environ.items() if k not in PARITY_ENV}
    return {**env, "KERAS_BACKEND": backend or BACKEND, "TF_CPP_MIN_LOG_LEVEL": "3", **(PARITY_ENV if lean else {})}


def _twins_process(args, lean: bool, backend: str | None) -> tuple[list[str], dict]:
    """The command line and environment of a `twins ARGS` process (`twins_cli`, `twins_started`)."""
    return [sys.executable, "-m", "twins_cli.main", *args], {**user_env(lean, backend), "PYTHONUNBUFFERED": "1"}


def twins_cli(*args, timeout=600, lean=False, backend=None, **kwargs) -> subprocess.CompletedProcess:
    """`twins ARGS` in a process of its own, on Keras backend `backend` (default: this pass's); `lean`: see
    `user_env`."""
    command, env = _twins_process(args, lean, backend)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def refused(*args) -> subprocess.CompletedProcess:
    """`twins ARGS` in this process, for a command line that fails before it builds a model; asserts that it did
    fail (a command that would start working here is a test that needs `twins_cli`)."""
    from twins_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # what the interpreter does with an uncaught SystemExit
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                    code = 1
                else:
                    code = exc.code or 0
    finally:
        os.chdir(cwd)
    assert code != 0, f"twins {' '.join(map(str, args))} was expected to be refused; it ran:\n{out.getvalue()}"
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def twins_started(*args, lean=False, backend=None) -> Callable[[], subprocess.CompletedProcess]:
    """`twins ARGS` started in a process of its own beside what the test does next (two runs that do not depend
    on each other use both cores where one would leave a core idle); returns a function that waits for it and
    returns what `twins_cli` would have."""
    command, env = _twins_process(args, lean, backend)
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # no pipe to fill while nobody reads
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)

    def result(timeout=600) -> subprocess.CompletedProcess:
        try:
            proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0), err.seek(0)
        try:
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        finally:
            out.close(), err.close()

    return result


def run_killed(args, run: Path, lean=False) -> str:
    """Start `twins train ARGS`, SIGKILL it as soon as its first resume state exists, and return its
    output."""
    env = user_env(lean)
    proc = subprocess.Popen([sys.executable, "-m", "twins_cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (run / "resume.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    return output


def backend_free(*args, **kwargs) -> subprocess.CompletedProcess:
    """`twins_cli` for a backend-free test: its Keras processes on `BACKEND_FREE`."""
    return twins_cli(*args, backend=BACKEND_FREE, **kwargs)
