"""For CI: one call that runs the parity checks of a twin pair and raises when any row fails.

    from twins_cli.parity import assert_twins

    def test_my_twins():
        assert_twins("mobilenet_v2")  # every check that applies, on every installed Keras backend

`twins parity NAME` is the same run from a shell, and exits 1 when a row fails.
"""
from __future__ import annotations

import sys

from .bounds import ALL_CHECKS, BACKENDS, EXPORT_CHECKS, TORCH_TWIN
from .launch import default_backends, run_parity
from .table import parity_table
from .variants import resolve


def assert_twins(name: str, backends=None, checks=None, *, size: int | None = None, batch: int = 2,
                 timeout: float | None = None, log=sys.stderr) -> list[dict]:
    """Run the parity checks of `name` (a registered model, one registered from outside the repository included,
    or a variant) on `backends` (default: every installed Keras backend, and the torch twin's own exports), all
    that apply or `checks` (names from `twins_cli.parity.ALL_CHECKS`), each backend in a worker process of its own
    (`run_parity`). Raises `AssertionError` whose message is the parity table, with each failing row's detail (a
    failing output or loss names the first layer whose output diverges), when any row fails; returns the rows
    otherwise. An export the framework cannot make here is not a failure (its row says why)."""
    resolve(name)  # an unknown name: the registry's error, before any worker starts
    checks = list(ALL_CHECKS if checks is None else checks)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown or not checks:
        raise ValueError(f"unknown check(s) {', '.join(unknown) or '(none given)'}; expected a subset of "
                         f"{', '.join(ALL_CHECKS)}")
    backends = default_backends(checks) if backends is None else list(backends)
    wrong = [b for b in backends if b not in BACKENDS + (TORCH_TWIN,)]
    if wrong or not backends:
        raise ValueError(f"unknown backend(s) {', '.join(wrong) or '(none given)'}; expected a subset of "
                         f"{', '.join(BACKENDS)} (and {TORCH_TWIN}, the torch twin's export rows)")
    rows = run_parity([name], backends, batch=batch, size=size, checks=checks, timeout=timeout, log=log)
    failed = [r for r in rows if not r["passed"] and r.get("supported", True)]
    if failed or not rows:
        exports = [c for c in checks if c in EXPORT_CHECKS]
        summary = (f"{len(failed)} of {len(rows)} parity rows of {name} failed" if rows
                   else f"no parity row of {name} was computed (checks: {', '.join(checks)}; exports: "
                        f"{', '.join(exports) or 'none'})")
        raise AssertionError(f"{summary}:\n\n{parity_table(rows, backends)}")
    return rows
