"""Run a command and report its wall time and the peak memory of its whole process tree (the command, the
pytest processes it starts, their parity workers), sampled from /proc four times a second.

    python3 tools/peak_rss.py make test
    python3 tools/peak_rss.py --timeline mem.tsv make test   # also every second: the tree's sums, its largest process

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


def sample(root: int) -> tuple[int, int, int, int]:
    """(PSS sum, RSS sum, largest PSS, pid of the largest) over the tree."""
    pids = tree(root)
    by_pss = {pid: pss(pid) for pid in pids}
    largest = max(by_pss, key=by_pss.get)
    return sum(by_pss.values()), sum(rss(pid) for pid in pids), by_pss[largest], largest


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
    peak_pss = peak_rss = peak_single = 0
    last_line = 0.0
    while proc.poll() is None:
        total_pss, total_rss, largest, largest_pid = sample(proc.pid)
        peak_pss, peak_rss = max(peak_pss, total_pss), max(peak_rss, total_rss)
        peak_single = max(peak_single, largest)
        if timeline is not None and time.time() - last_line >= 1.0:
            last_line = time.time()
            timeline.write(f"{last_line - start:.0f}\t{total_pss / 2**30:.2f}\t{total_rss / 2**30:.2f}\t"
                           f"{largest / 2**30:.2f}\t{command_line(largest_pid)}\n")
            timeline.flush()
        time.sleep(0.25)
    elapsed = time.time() - start
    print(f"[peak_rss] exit {proc.returncode}; wall {elapsed // 60:.0f} min {elapsed % 60:.0f} s; "
          f"peak memory of the process tree {gib(peak_pss)} PSS, each page counted once "
          f"({gib(peak_rss)} summing every process's RSS; largest single process {gib(peak_single)} PSS)",
          file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
