"""The parity table: one Markdown table per model, a line per check and a column per backend, each cell the
measured error and its verdict (a failure with its detail: the first diverging layer), as `twins parity`, the
report and `assert_twins` print it."""
from __future__ import annotations

from .bounds import ALL_CHECKS


def _fmt(error) -> str:
    return "n/a" if error is None else f"{error:.1e}"


def parity_table(rows: list[dict], backends: list[str]) -> str:
    """Markdown table per model: one line per check, one column per backend."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        meta = next((r["meta"] for r in mine if r["meta"]), {})
        options = meta.get("options") or {}
        built = f", built with {', '.join(f'{k}={v}' for k, v in options.items())}" if options else ""
        height = meta.get("size", "?")
        lines.append(f"### {model}  (batch {meta.get('batch', '?')}, {height}x{meta.get('width', height)}, "
                     f"eval float32, train checks {meta.get('train_dtype', '?')}, Keras on {meta.get('device', '?')}, "
                     f"torch reference on cpu{built})")
        lines.append("")
        lines.append("| check | " + " | ".join(backends) + " | bound |")
        lines.append("|---|" + "---|" * len(backends) + "---|")
        checks = [c for c in ALL_CHECKS if any(r["check"] == c for r in mine)] + \
                 [c for c in dict.fromkeys(r["check"] for r in mine) if c not in ALL_CHECKS]
        for check in checks:
            cells, bound = [], None
            for backend in backends:
                row = next((r for r in mine if r["check"] == check and r["backend"] == backend), None)
                if row is None:
                    cells.append("-")
                    continue
                bound = row["bound"]
                if not row.get("supported", True):
                    cells.append(f"n/a ({row['detail'].removeprefix('not supported: ').split(' (Keras on')[0]})")
                    continue
                cells.append(f"{_fmt(row['error'])} {'ok' if row['passed'] else 'FAIL'}"
                             + ("" if row["passed"] or not row["detail"] else f" ({row['detail']})"))
            lines.append(f"| {check} | " + " | ".join(cells) + f" | {'' if bound is None else f'{bound:.0e}'} |")
        lines.append("")
    return "\n".join(lines)
