"""A parity row: one check of one model on one backend, its error, its bound and what it says.

`check_row` turns a check's `(error, detail)` into a row, and anything the check raises into a failed row
that says what was raised (an export the limits record is a row that is not supported), so a parity run
never crashes on one check.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Row:
    model: str
    backend: str
    check: str
    error: float | None
    bound: float
    passed: bool
    detail: str = ""
    meta: dict = field(default_factory=dict)
    # False for an export the framework cannot make on this backend here (the detail says why): neither a
    # pass nor a parity failure.
    supported: bool = True



def check_row(name: str, backend: str, check: str, bound: float, compute, meta: dict) -> Row:
    """The row of one check: `compute()` returns `(error, detail)`, or `(error, detail, bound)` where the check
    makes its own bound (the graded eval checks, `compare.graded`); an export the limits record is a row that is
    not supported, any other exception a failed row saying what was raised (never a crashed parity run)."""
    from twins_cli.export import Unsupported

    try:
        result = compute()
        # `(error, detail)`, or `(error, detail, bound)` for a check that grades against a bound of its own making
        error, detail, bound = result if len(result) == 3 else (*result, bound)
    except Unsupported as exc:
        return Row(name, backend, check, None, bound, False, f"not supported: {exc}", meta, supported=False)
    except Exception as exc:
        return Row(name, backend, check, None, bound, False, f"raised {type(exc).__name__}: {exc}", meta)
    return Row(name, backend, check, float(error), bound, bool(np.isfinite(error) and error <= bound), detail, meta)



def failed_row(model, backend, reason) -> dict:
    return {"model": model, "backend": backend, "check": "run", "error": None, "bound": 0.0,
            "passed": False, "detail": reason, "meta": {}}

