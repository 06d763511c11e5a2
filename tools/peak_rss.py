"""Run a command and report its wall time and the peak resident memory of its whole process tree
(the command, the pytest processes it starts, their parity workers), sampled from /proc.

    python3 tools/peak_rss.py make test

`/usr/bin/time -v` reports the largest single process only; a suite whose pytest process waits on a
worker subprocess holds both at once, and the sum is what has to fit the machine. Linux only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) resident bytes over `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total = largest = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        largest = max(largest, rss.get(pid, 0))
        stack += children.get(pid, [])
    return total, largest


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    start = time.time()
    proc = subprocess.Popen(argv)
    peak_total = peak_single = 0
    while proc.poll() is None:
        total, largest = tree_rss(proc.pid)
        peak_total, peak_single = max(peak_total, total), max(peak_single, largest)
        time.sleep(0.25)
    elapsed = time.time() - start
    print(f"[peak_rss] exit {proc.returncode}; wall {elapsed // 60:.0f} min {elapsed % 60:.0f} s; "
          f"peak memory of the process tree {peak_total / 2**30:.2f} GiB "
          f"(largest single process {peak_single / 2**30:.2f} GiB)", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
