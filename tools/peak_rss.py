"""Run a command and report its wall time and the peak memory of its whole process tree (the command, the
pytest processes it starts, their parity workers), sampled from /proc four times a second (PSS read only where
it could raise a peak: `Peaks`).

    python3 tools/peak_rss.py make test
    python3 tools/peak_rss.py --timeline mem.tsv make test   # also every 5 s: the tree's sums, its largest process

Two sums over the tree, both reported:
- PSS (proportional set size, /proc/PID/smaps_rollup): each page counted once, a page that N processes share
  counted 1/N in each. What the tree costs the machine, and the figure the budgets are measured in.
- RSS (/proc/PID/statm): each process's resident pages in full. It counts a page every process maps again in
  every process: the frameworks' shared libraries (0.3-0.6 GB a Python process with torch and tensorflow
  loaded), and, while a process forks a child (`subprocess` from a 4 GB pytest process), the parent's whole
  memory a second time for the instant before the child execs (seen here as one-sample spikes of +4 GB).

`/usr/bin/time -v` reports the largest single process only; a suite whose pytest process waits on a
worker subprocess holds both at once, and the sum is what has to fit the machine. Linux only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
TIMELINE_EVERY_S = 5.0  # a timeline line reads every process's PSS (see `Peaks`)


def pss(pid: int) -> int:
    """Proportional set size in bytes (0 for a process that is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack += children.get(pid, [])
    return pids


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Peaks:
    """The peaks over the samples: PSS sum, RSS sum, largest single PSS; `sample_pss`: the PSS read in the last
    sample, by pid.

    Reading a process's PSS makes the kernel walk its page tables: 257 ms for one sample of `make test`'s
    tensorflow pass (9 processes, a 4 GB pytest process among them), against 0.4 ms for their RSS. Read four
    times a second, that cost a fifth of a core of the 2 the measured command had. A process's PSS is never
    above its RSS, so a sample whose RSS sum is not above the PSS peak so far cannot raise that peak, and a
    process whose RSS is not above the largest PSS so far cannot be the new largest: `update` reads PSS only
    where it could matter (`force`: every process's, for a timeline line). The peaks are the ones reading every
    PSS would give."""

    def __init__(self):
        self.pss = self.rss = self.single = 0
        self.pss_reads = 0
        self.sample_pss: dict[int, int] = {}

    def update(self, pids: list[int], rss_of=None, pss_of=None, force=False) -> tuple[int | None, int]:
        """One sample of the tree `pids`; returns (its PSS sum, or None where no PSS was read, its RSS sum)."""
        rss_of, pss_of = rss_of or rss, pss_of or pss
        by_rss = {pid: rss_of(pid) for pid in pids}
        total_rss = sum(by_rss.values())
        self.rss = max(self.rss, total_rss)
        whole = force or total_rss > self.pss
        wanted = pids if whole else [pid for pid in pids if by_rss[pid] > self.single]
        by_pss = self.sample_pss = {pid: pss_of(pid) for pid in wanted}
        self.pss_reads += len(by_pss)
        self.single = max([self.single, *by_pss.values()])
        if not whole:
            return None, total_rss
        total_pss = sum(by_pss.values())
        self.pss = max(self.pss, total_pss)
        return total_pss, total_rss


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:160]
    except OSError:
        return "?"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    timeline = None
    if argv[0] == "--timeline":
        timeline, argv = open(argv[1], "w"), argv[2:]
        timeline.write("seconds\ttree_pss_gib\ttree_rss_gib\tlargest_pss_gib\tlargest_process\n")
    start = time.time()
    proc = subprocess.Popen(argv)
    peaks = Peaks()
    last_line = 0.0
    while proc.poll() is None:
        line_due = timeline is not None and time.time() - last_line >= TIMELINE_EVERY_S
        pids = tree(proc.pid)
        total_pss, total_rss = peaks.update(pids, force=line_due)
        if line_due:
            last_line = time.time()
            read = peaks.sample_pss  # every process's, `force`d
            largest = max(read, key=read.get)
            timeline.write(f"{last_line - start:.0f}\t{total_pss / 2**30:.2f}\t{total_rss / 2**30:.2f}\t"
                           f"{read[largest] / 2**30:.2f}\t{command_line(largest)}\n")
            timeline.flush()
        time.sleep(0.25)
    elapsed = time.time() - start
    print(f"[peak_rss] exit {proc.returncode}; wall {elapsed // 60:.0f} min {elapsed % 60:.0f} s; "
          f"peak memory of the process tree {gib(peaks.pss)} PSS, each page counted once "
          f"({gib(peaks.rss)} summing every process's RSS; largest single process {gib(peaks.single)} PSS)",
          file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
