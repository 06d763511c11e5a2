"""`tools/peak_rss.py`, the tool the budgets are measured with: the peaks it reports are the ones reading every
process's PSS at every sample would give, though it reads PSS only where a sample could raise a peak; and a real
run of it sees a child's memory."""
from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="no framework: the tensorflow pass only")


def load_tool():
    spec = importlib.util.spec_from_file_location("peak_rss", ROOT / "tools" / "peak_rss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def samples(seed: int, n: int = 400):
    """A tree's samples: each process's (RSS, PSS), PSS at most RSS; processes come and go."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        procs = {}
        for pid in rng.sample(range(1, 12), rng.randint(1, 8)):
            resident = rng.randint(50, 4000)
            procs[pid] = (resident, int(resident * rng.uniform(0.4, 1.0)))
        out.append(procs)
    return out


def track(peaks, sequence) -> None:
    for procs in sequence:
        peaks.update(list(procs), rss_of=lambda pid: procs[pid][0], pss_of=lambda pid: procs[pid][1])


def test_the_peaks_equal_reading_every_pss_and_fewer_are_read():
    tool = load_tool()
    for seed in range(5):
        sequence = samples(seed)
        peaks = tool.Peaks()
        track(peaks, sequence)
        assert peaks.pss == max(sum(p for _, p in procs.values()) for procs in sequence)
        assert peaks.rss == max(sum(r for r, _ in procs.values()) for procs in sequence)
        assert peaks.single == max(p for procs in sequence for _, p in procs.values())
        assert peaks.pss_reads < 0.5 * sum(len(procs) for procs in sequence)


def test_a_bound_that_prunes_too_much_is_caught():
    """The same comparison fails for a tracker that skips PSS whenever the RSS sum is under the RSS peak so far
    (RSS, not PSS: a sample whose PSS beats the PSS peak while its RSS does not beat the RSS peak is missed)."""
    tool = load_tool()

    class Hasty(tool.Peaks):
        def update(self, pids, rss_of=None, pss_of=None, force=False):
            total_rss = sum(rss_of(pid) for pid in pids)
            if total_rss <= self.rss:
                return None, total_rss
            self.rss = total_rss
            total_pss = sum(pss_of(pid) for pid in pids)
            self.pss = max(self.pss, total_pss)
            return total_pss, total_rss

    missed = 0
    for seed in range(5):
        sequence = samples(seed)
        hasty = Hasty()
        track(hasty, sequence)
        missed += hasty.pss != max(sum(p for _, p in procs.values()) for procs in sequence)
    assert missed > 0


def test_a_run_sees_its_childs_memory(tmp_path):
    """A child that holds 300 MB of touched pages for a second: the PSS peak the tool prints is at least that."""
    script = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "peak_rss.py"), "--timeline", str(tmp_path / "t.tsv"),
                           sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    peak = float(line.split("peak memory of the process tree ")[1].split(" GiB")[0])
    assert peak >= 0.29, line
    assert (tmp_path / "t.tsv").read_text().startswith("seconds\ttree_pss_gib")
