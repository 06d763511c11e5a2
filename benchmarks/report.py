"""Render benchmark rows: a Markdown report (one table per model x mode) and a PNG bar chart.

A library as well as part of `python -m benchmarks`: a report command can load a saved
`benchmark.json` and call `render_markdown(rows, meta)` / `render_chart(rows, path)` without running
anything. Only numpy-free standard library code at import time; matplotlib is imported inside
`render_chart`, through its object-oriented API with the Agg canvas, so rendering never changes the
pyplot backend of a process that imported this module.

Rows are the dicts described by `benchmarks.schema.COLUMNS`. A row whose `status` is not "ok" keeps
its place in the table (with its reason) and appears in the chart as a labelled gap, never silently
dropped.
"""
from __future__ import annotations

import math

from benchmarks import schema
from twins import checkpoints


def write_atomic(path: str, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (`twins.checkpoints.write_atomic`)."""
    payload = data.encode() if isinstance(data, str) else data
    checkpoints.write_atomic(path, lambda tmp: tmp.write_bytes(payload))


# ---------------------------------------------------------------------------------------------
# Ordering and labels shared by the table and the chart


def _backend_rank(backend: str) -> int:
    return schema.BACKENDS.index(backend) if backend in schema.BACKENDS else len(schema.BACKENDS)


def _mode_rank(mode: str) -> int:
    return schema.MODES.index(mode) if mode in schema.MODES else len(schema.MODES)


def _table_model(row: dict) -> str:
    """Peer rows (keras.applications.ResNet50) sit in the table of the model they are a peer of."""
    return row.get("peer_of") or row["model"]


def _backend_label(row: dict) -> str:
    if row.get("peer_of"):
        return f"{row['backend']} · {row['model']}"
    return row["backend"]


def _ordered_keys(rows, key):
    keys = []
    for row in rows:
        k = key(row)
        if k not in keys:
            keys.append(k)
    return keys


def _fmt(value, digits: int = 3) -> str:
    """Three significant digits (at least one decimal below 100), '—' for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}g}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _short_error(error: str | None, limit: int = 400) -> str:
    """A table-sized error: a crashed worker's error is a first line plus the tail of its output,
    whose end (the final exception) matters most. The full text stays in benchmark.json."""
    error = error or ""
    if len(error) <= limit:
        return error
    first, _, rest = error.partition("\n")
    if len(first) >= limit:
        return first[: limit - 1] + "…"
    return f"{first} … {' '.join(rest.split())[-(limit - len(first)):]}"


# ---------------------------------------------------------------------------------------------
# Markdown


def _meta_lines(meta: dict) -> list[str]:
    options = meta.get("options", {})
    versions = meta.get("versions", {})
    lines = []
    device = meta.get("device", "?")
    device_name = meta.get("device_name")
    lines.append(
        f"- **{meta.get('date', '?')}** on `{meta.get('hostname', '?')}`: device **{device}**"
        + (f" ({device_name})" if device_name else "")
        + (f", CPU {meta['cpu_model']} x {meta.get('cpu_count')}" if meta.get("cpu_model") else "")
    )
    lines.append(
        f"- dtype **{options.get('dtype', '?')}**, TF32 **{'on' if meta.get('tf32') else 'off'}**, "
        f"channels_last (torch backends) **{'on' if options.get('channels_last') else 'off'}**, "
        f"**{options.get('warmup', '?')}** warm-up steps excluded, **{options.get('repeats', '?')}** "
        "timed steps per row (median, min, max of the per-step times; device synchronised each step)"
    )
    shown = ", ".join(f"{name} {versions[name]}" for name in versions if versions[name])
    lines.append(f"- python {meta.get('python', '?')}; {shown}")
    lines.append(
        "- `ratio` = samples/s ÷ the native `torch` row of the same model, mode, batch, dtype and "
        "image size (peers are compared with torch resnet50)"
    )
    if meta.get("peak_mem_note"):
        lines.append(f"- peak memory: {meta['peak_mem_note']}")
    load = meta.get("load_average_before")
    if meta.get("load_warning"):
        lines.append(f"- **warning**: {meta['load_warning']}")
    elif load is not None:
        lines.append(f"- load average before the run: {load[0]:.2f} on {meta.get('cpu_count')} CPUs")
    return lines


def render_markdown(rows: list[dict], meta: dict) -> str:
    """A Markdown report: a short header from `meta`, then one table per model x mode with one row
    per batch size and backend (failed rows included, with their reason)."""
    out = ["# Benchmark results", ""]
    out += _meta_lines(meta or {})
    out.append("")
    if not rows:
        out.append("No rows: nothing was measured.")
        return "\n".join(out) + "\n"
    models = _ordered_keys(rows, _table_model)
    for model in models:
        for mode in sorted({r["mode"] for r in rows if _table_model(r) == model}, key=_mode_rank):
            table_rows = sorted(
                (r for r in rows if _table_model(r) == model and r["mode"] == mode),
                key=lambda r: (r["batch"], _backend_rank(r["backend"]), bool(r.get("peer_of"))),
            )
            out.append(f"## {model} · {mode}")
            out.append("")
            out += _table(table_rows, mode)
            out.append("")
    return "\n".join(out)


def _status(r: dict) -> str:
    return r["status"] if r["status"] == schema.STATUS_OK else f"**{r['status']}**: {_short_error(r.get('error'))}"


def _table(table_rows: list[dict], mode: str) -> list[str]:
    """One model x mode: throughput columns, or for `latency` the percentiles of the batch-1 calls; the export
    runtimes' artifact size and their error against the eager twin where the table has such rows."""
    exported = any(r["backend"] in schema.EXPORT_BACKENDS for r in table_rows)
    extra = ["artifact MB", "export err"] if exported else []
    if mode == "latency":
        head = ["backend", "img", "p50 ms", "p90 ms", "p99 ms", "calls", "speed-up vs torch", "peak mem MB"]
        cells = lambda r: [_backend_label(r), r["img_size"], _fmt(r.get("latency_ms_p50")), _fmt(r.get("latency_ms_p90")),  # noqa: E731
                           _fmt(r.get("latency_ms_p99")), r.get("steps_timed") or "—",
                           "—" if r.get("ratio_to_torch") is None else f"{r['ratio_to_torch']:.2f}", _fmt(r.get("peak_mem_mb"))]
    else:
        head = ["backend", "batch", "img", "samples/s", "step ms median", "min", "max", "ratio to torch", "peak mem MB",
                "params M"]
        cells = lambda r: [_backend_label(r), r["batch"], r["img_size"], _fmt(r.get("samples_per_sec")),  # noqa: E731
                           _fmt(r.get("step_ms_median")), _fmt(r.get("step_ms_min")), _fmt(r.get("step_ms_max")),
                           "—" if r.get("ratio_to_torch") is None else f"{r['ratio_to_torch']:.2f}",
                           _fmt(r.get("peak_mem_mb")), "—" if r.get("params_m") is None else f"{r['params_m']:.2f}"]
    head += extra + ["compiler / runtime", "status"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if h in ("backend", "compiler / runtime", "status") else "--:" for h in head) + "|"]
    for r in table_rows:
        row = cells(r)
        if exported:
            row += [_fmt(r.get("artifact_mb")), "—" if r.get("export_error") is None else f"{r['export_error']:.1e}"]
        row += [r.get("compiler") or "—", _status(r)]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# PNG chart


_COLORS = {
    "torch": "#d62728",
    "torch-compile": "#ff7f0e",
    "keras-tensorflow": "#1f77b4",
    "keras-jax": "#2ca02c",
    "keras-torch": "#9467bd",
    "torch-export": "#8c564b",
    "onnxruntime": "#e377c2",
    "onnxruntime-keras": "#7f7f7f",
    "tf-saved-model": "#bcbd22",
    "litert": "#17becf",
    "openvino": "#aec7e8",
}


def render_chart(rows: list[dict], path: str, title: str | None = None) -> str:
    """Bar chart of samples/s: one panel per mode, groups of bars per model (and batch size when
    several were swept), one bar per backend. Rows that did not run are marked 'n/a' in their slot.
    A log scale is used when a panel spans more than a factor of 50. Written atomically; returns
    `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    modes = sorted({r["mode"] for r in rows}, key=_mode_rank) or ["(no rows)"]
    backends = sorted({r["backend"] for r in rows}, key=_backend_rank)
    several_batches = len({r["batch"] for r in rows}) > 1
    groups = _ordered_keys(
        sorted(rows, key=lambda r: r["batch"]), lambda r: (r["model"], r["batch"], r["img_size"])
    )
    # Keep the models in the order they were asked for, batches ascending within each.
    model_order = _ordered_keys(rows, lambda r: r["model"])
    groups.sort(key=lambda g: (model_order.index(g[0]), g[1]))

    n_series = max(len(backends), 1)
    width = min(max(7.0, 2.0 + len(groups) * (0.32 * n_series + 0.6)), 40.0)
    fig = Figure(figsize=(width, 3.8 * len(modes) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    if title is None:
        devices = sorted({str(r.get("device")) for r in rows})
        dtypes = sorted({str(r.get("dtype")) for r in rows})
        title = f"Throughput, samples/s (higher is better) — device {', '.join(devices)}, {', '.join(dtypes)}"
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(len(modes), 1, squeeze=False)[:, 0]
    bar_width = 0.8 / n_series

    for ax, mode in zip(axes, modes):
        by_slot = {(r["model"], r["batch"], r["img_size"], r["backend"]): r for r in rows if r["mode"] == mode}
        values = [
            r["samples_per_sec"]
            for r in by_slot.values()
            if r["status"] == schema.STATUS_OK and r.get("samples_per_sec")
        ]
        log_scale = bool(values) and max(values) / min(values) > 50
        if log_scale:
            ax.set_yscale("log")
        marker_transform = blended_transform_factory(ax.transData, ax.transAxes)
        for b_index, backend in enumerate(backends):
            xs, heights, labels_at = [], [], []
            for g_index, group in enumerate(groups):
                x = g_index + (b_index - (n_series - 1) / 2) * bar_width
                row = by_slot.get((*group, backend))
                if row is None:
                    continue  # this backend was not asked for this model (e.g. peers are Keras-only)
                if row["status"] == schema.STATUS_OK and row.get("samples_per_sec"):
                    xs.append(x)
                    heights.append(row["samples_per_sec"])
                else:
                    labels_at.append((x, row["status"]))
            ax.bar(xs, heights, bar_width * 0.92, label=backend, color=_COLORS.get(backend), zorder=2)
            for x, h in zip(xs, heights):
                ax.annotate(
                    _fmt(h), (x, h), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6.5, rotation=90 if n_series > 3 else 0,
                )
            for x, status in labels_at:
                ax.text(
                    x, 0.02, f"n/a ({status})", transform=marker_transform, rotation=90,
                    ha="center", va="bottom", fontsize=6.5, color="#555555",
                )
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            [
                f"{model}\nbatch {batch}, {size}px" if several_batches else f"{model}\n{size}px"
                for model, batch, size in groups
            ],
            fontsize=8,
        )
        batches = sorted({g[1] for g in groups})
        subtitle = f"{mode}" + ("" if several_batches else f" (batch {batches[0]})" if batches else "")
        ax.set_title(subtitle, fontsize=10)
        ax.set_ylabel("samples/s" + (" (log scale)" if log_scale else ""))
        ax.grid(axis="y", alpha=0.3, zorder=0)
        if values:
            low, high = ax.get_ylim()
            # Head-room for the value labels above the tallest bar.
            ax.set_ylim(low, high * (3.0 if log_scale else 1.15))
        else:
            ax.text(0.5, 0.5, "no successful rows", transform=ax.transAxes, ha="center", color="#555555")
        ax.set_xlim(-0.6, len(groups) - 0.4)
    if backends:
        axes[0].legend(fontsize=8, ncols=min(len(backends), 5), loc="upper right")

    checkpoints.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    return path
