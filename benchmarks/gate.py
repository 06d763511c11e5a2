"""Workers that prepare side by side and time one at a time: a readers-writer lock on a file (`flock`).

Most of a worker's wall time on a CPU is not its timed steps: importing its framework (tensorflow: ~9 s on
2 cores), building the model, tracing and compiling it (torch.compile's inductor: ~30 s for resnet18), the
warm-up steps. None of that is measured, and much of it runs on one core. The harness can therefore start the
next worker while one prepares, as long as no worker times a step while another does anything at all:

- a worker holds the gate *shared* whenever it runs (the harness takes it before it starts the process, which
  inherits it, and the kernel drops it when the process has exited), so any number of workers prepare at once;
- around its timed steps only (`timed()`) it holds the gate *exclusively*: it waits until every other worker
  has reached a gate call of its own (its timed steps, or the end of its preparation), times its steps with the
  cores to itself, and goes back to shared.

A worker waiting for the gate is asleep in `flock`, not computing. A worker that dies releases what it held (the
kernel drops a process's `flock` locks with its files). What the gate does not make exclusive is stated where
the rows say it: a row's `first_step_ms` (the first warm-up step, tracing and compilation) may share the cores
with another worker's preparation.

A caller running untimed work of its own beside the workers (`twins report` runs `twins explain`) holds the
gate shared too: a `Gate` on the same file, `shared()` before the work and `close()` after it.

On a GPU (`benchmarks.gpu`, `timed_only`) preparing holds nothing: with many workers alive, a gate that every
preparing worker holds shared lets a timed loop start only when none is preparing, and the run would go one
worker at a time. There a worker compiles (its first step) beside the others, and takes the gate exclusively for
its remaining warm-up steps and its timed steps, so timed loops never overlap one another; what the first steps
of other workers did on the GPU meanwhile is recorded (`first_step` intervals) and reported, not prevented.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time

MODES = {fcntl.LOCK_SH: "shared", fcntl.LOCK_EX: "exclusive"}
FIRST_STEP = "first_step"
PREPARE = "prepare"  # a timed-only gate's preparing: recorded, no lock held
BESIDE = "beside"  # untimed device work of a process that holds no gate (the GPU run's parity run)


class Gate:
    """The gate file at `path`, opened by this process; `None` path: a gate that never waits (it still records
    its intervals). `intervals`: `[mode, start, end]` of every time it was held, on `time.monotonic()` (one
    clock for every process of the machine), for `overlaps`."""

    def __init__(self, path: str | None, fd: int | None = None, since: float | None = None,
                 timed_only: bool = False):
        """`fd`: the gate file already open and held shared since `since`, inherited from the process that
        started this one (`open_shared`), so that this process never runs a moment without the gate.
        `timed_only`: `shared()` takes no lock (it still records its intervals); only `timed()` locks."""
        self.path = path
        self.timed_only = timed_only
        self.mode = self.since = None
        if fd is not None:
            self.fd, self.mode, self.since = fd, fcntl.LOCK_SH, since if since is not None else time.monotonic()
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None
        self.intervals: list[list] = []

    def _lock(self, mode) -> None:
        if self.mode == mode:
            return
        self.release()  # flock converts by releasing first; say so rather than pretend it is atomic
        if self.fd is not None and not (self.timed_only and mode == fcntl.LOCK_SH):
            fcntl.flock(self.fd, mode)
        self.mode, self.since = mode, time.monotonic()

    def shared(self) -> None:
        """Preparing: other workers may prepare too; none may time."""
        self._lock(fcntl.LOCK_SH)

    def release(self) -> None:
        if self.mode is None:
            return
        # before the others may go on; a timed-only gate's shared intervals held nothing: they are "prepare"
        mode = PREPARE if self.timed_only and self.mode == fcntl.LOCK_SH else MODES[self.mode]
        self.intervals.append([mode, self.since, time.monotonic()])
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.mode = None

    @contextlib.contextmanager
    def timed(self):
        """The cores to this worker alone: every other holder of the gate is waiting in a gate call."""
        self._lock(fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._lock(fcntl.LOCK_SH)

    @contextlib.contextmanager
    def first_step(self):
        """Recorded only, on a timed-only gate: the first (compiling) step of a row, for the run to see which timed
        loops it overlapped (otherwise the worker's shared hold covers it)."""
        start = time.monotonic()
        try:
            yield
        finally:
            if self.timed_only:
                self.intervals.append([FIRST_STEP, start, time.monotonic()])

    def close(self) -> None:
        self.release()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_shared(path: str) -> tuple[int, float]:
    """The gate file opened and held shared, for a process about to be started with the descriptor (`pass_fds`):
    the lock belongs to the open file, so the child holds it from its first instruction (its interpreter's start
    and imports are work too) until its last (the kernel drops it when every copy of the descriptor is closed, at
    the child's exit and its forked children's). Waits while a worker times its steps. Returns (fd, since)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd, time.monotonic()


def overlaps(holders: dict[str, list]) -> list[str]:
    """Every exclusive interval of one holder that overlaps any interval of another (`{name: intervals}`): what
    the gate exists to prevent, as sentences; empty when the timed steps each had the gate to themselves."""
    problems = []
    for name, mine in holders.items():
        for other, theirs in holders.items():
            if other == name:
                continue
            for mode, start, end in mine:
                if mode != "exclusive":
                    continue
                for their_mode, their_start, their_end in theirs:
                    if their_mode in (FIRST_STEP, PREPARE, BESIDE):  # recorded only: no lock covered them
                        continue
                    if max(start, their_start) < min(end, their_end):
                        problems.append(f"{name}'s timed steps ({start:.3f}-{end:.3f} s) overlap {other}'s "
                                        f"{their_mode} hold ({their_start:.3f}-{their_end:.3f} s)")
    return problems


def beside_first_steps(holders: dict[str, list]) -> dict[str, float]:
    """Per holder, the seconds its timed loops (exclusive) overlapped another holder's first step (or `BESIDE`
    interval): with a `timed_only` gate another worker may compile, and autotune on the device, while one times."""
    seconds = {}
    for name, mine in holders.items():
        total = 0.0
        for mode, start, end in mine:
            if mode != "exclusive":
                continue
            for other, theirs in holders.items():
                if other == name:
                    continue
                for their_mode, their_start, their_end in theirs:
                    if their_mode in (FIRST_STEP, BESIDE):
                        total += max(0.0, min(end, their_end) - max(start, their_start))
        if total:
            seconds[name] = round(total, 3)
    return seconds
