"""Render benchmark rows: a Markdown report (one table per model x mode) and a PNG bar chart.

A library as well as part of `python -m benchmarks`: a report command can load a saved
`benchmark.json` and call `render_markdown(rows, meta)` / `render_chart(rows, path)` without running
anything. Only numpy-free standard library code at import time; matplotlib is imported inside
`chart_figure` (what `render_chart` saves), through its object-oriented API with the Agg canvas, so
rendering never changes the pyplot backend of a process that imported this module.

Rows are the dicts described by `benchmarks.schema.COLUMNS`. A row whose `status` is not "ok" keeps
its place in the table (with its reason); the chart draws only the rows that ran (samples/s, and batch-1
latency in ms in a panel of its own) and its caption counts the rows it leaves to the tables.
"""
from __future__ import annotations

import colorsys
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


# One colour per backend, the same in every chart, with hues far apart: every pair is at least 25 apart in CIELAB
# (CIE76 ΔE; `colour_clashes`, checked by the tests), so no two backends read as the same blue.
_COLORS = {
    "torch": "#d62728",  # red
    "torch-compile": "#ff7f0e",  # orange
    "keras-tensorflow": "#1f77b4",  # blue
    "keras-jax": "#2ca02c",  # green
    "keras-torch": "#9467bd",  # purple
    "keras-torch-jit": "#e6ab02",  # mustard
    "torch-export": "#8c564b",  # brown
    "onnxruntime": "#e377c2",  # pink
    "onnxruntime-keras": "#7f7f7f",  # grey
    "tf-saved-model": "#bcbd22",  # olive
    "litert": "#17becf",  # cyan
    "openvino": "#000000",  # black
}
# The colours of backends `_COLORS` does not name (a runtime added before it gets its own), in the order they
# appear: at least 20 apart from `_COLORS` and from each other. Past these, `backend_colors` makes new ones.
_FALLBACK_COLORS = ("#393b79", "#637939", "#7b4173", "#fdae6b", "#9ecae1", "#a1d99b", "#006d5b", "#f7b6d2")
# A chart's bars: the samples/s of a throughput row, the p50 (with p90 and p99 marked) of a latency row.
_LATENCY_MODE = "latency"
# A panel's y axis turns logarithmic when its values span more than this factor.
_LOG_SPAN = 50.0


def backend_colors(backends) -> dict[str, str]:
    """`{backend: colour}` for the names in `backends`: each known backend its own colour from `_COLORS`, every
    other name the next colour of `_FALLBACK_COLORS` the chart does not use yet, then generated ones (hues spread by
    the golden ratio). Never one colour for two names."""
    names = list(dict.fromkeys(backends))
    colours = {name: _COLORS[name] for name in names if name in _COLORS}
    spare = [c for c in _FALLBACK_COLORS if c not in colours.values()]
    generated = 0
    for name in names:
        if name in colours:
            continue
        if spare:
            colours[name] = spare.pop(0)
            continue
        while True:
            generated += 1
            red, green, blue = colorsys.hsv_to_rgb((generated * 0.618033988749895) % 1.0,
                                                   (0.9, 0.55)[generated % 2], (0.8, 0.55)[generated // 2 % 2])
            colour = f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
            if colour not in colours.values():
                break
        colours[name] = colour
    return {name: colours[name] for name in names}


def _lab(colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of a '#rrggbb' colour."""
    channels = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
    fx, fy, fz = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def colour_clashes(colours: dict[str, str], min_delta_e: float = 20.0) -> list[tuple[str, str, float]]:
    """The pairs of `{name: '#rrggbb'}` whose colours are closer than `min_delta_e` (CIE76 ΔE in CIELAB: about 2 is
    just noticeable, 20 reads as another colour); a repeated colour is a pair at 0."""
    names = list(colours)
    labs = {name: _lab(colours[name]) for name in names}
    clashes = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            delta = math.dist(labs[a], labs[b])
            if delta < min_delta_e:
                clashes.append((a, b, round(delta, 1)))
    return clashes


def _drawn_value(row: dict):
    """The figure a row's bar shows (a throughput row's samples/s, a latency row's p50 in ms), or None when the row
    is not drawn: it did not run (its status says why), or it has no such figure."""
    if row.get("status") != schema.STATUS_OK:
        return None
    value = row.get("latency_ms_p50") if row.get("mode") == _LATENCY_MODE else row.get("samples_per_sec")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def chart_note(rows: list[dict]) -> str | None:
    """The chart's caption about the rows it does not draw (how many, by status), or None when it draws them all."""
    return _note([r for r in rows if _drawn_value(r) is None])


def _note(left: list[dict]) -> str | None:
    if not left:
        return None
    counts: dict[str, int] = {}
    for r in left:
        status = r.get("status") or "?"
        status = "ok but no figure" if status == schema.STATUS_OK else status
        counts[status] = counts.get(status, 0) + 1
    by_status = ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda k: (-k[1], k[0])))
    return (f"{len(left)} n/a row{'s' if len(left) != 1 else ''} ({by_status}): not drawn, listed with "
            f"{'their reasons' if len(left) != 1 else 'its reason'} in the tables")


def chart_layout(rows: list[dict]) -> dict:
    """What `render_chart` draws, as data (so it can be checked without reading pixels).

    `panels`: one per mode with at least one drawn row, in `schema.MODES` order; each has `mode`, `unit`
    ("samples/s", or "ms" for latency), `log` (log scale), `title`, `groups` (one per model x batch x size (x dtype x
    device) with drawn rows: `label`, `center`) and `bars` (one per drawn row, packed side by side within its group:
    `backend`, `group`, `x`, `value` (samples/s, or p50 ms), `p90`, `p99` (latency rows; None otherwise), `top` (the
    highest of the three: where the whisker ends and the label sits), `color`).
    `colors`: `{backend: colour}` of the backends drawn. `not_drawn`: the rows that did not run (status not ok), which
    the chart leaves to the tables; `note`: the caption that says so (`chart_note`)."""
    drawn = [r for r in rows if _drawn_value(r) is not None]
    left = [r for r in rows if _drawn_value(r) is None]
    colours = backend_colors(sorted({r["backend"] for r in drawn}, key=lambda b: (_backend_rank(b), b)))
    model_order = _ordered_keys(rows, lambda r: r["model"])
    several = {column: len({r.get(column) for r in drawn}) > 1 for column in ("dtype", "device")}
    panels = []
    for mode in sorted({r["mode"] for r in drawn}, key=lambda m: (_mode_rank(m), m)):
        latency = mode == _LATENCY_MODE
        mine = [r for r in drawn if r["mode"] == mode]
        group_of = lambda r: (r["model"], r["batch"], r["img_size"], r.get("dtype"), r.get("device"))  # noqa: E731
        group_keys = _ordered_keys(
            sorted(mine, key=lambda r: (model_order.index(r["model"]), r["batch"], r["img_size"])), group_of)
        batches = sorted({key[1] for key in group_keys})
        groups, bars, cursor = [], [], 0.0
        for key in group_keys:
            model, batch, size, dtype, device = key
            label = "\n".join(filter(None, [
                model,
                ", ".join(filter(None, [f"batch {batch}" if len(batches) > 1 else None, f"{size}px",
                                        dtype if several["dtype"] else None, device if several["device"] else None])),
            ]))
            members = sorted((r for r in mine if group_of(r) == key),
                             key=lambda r: (_backend_rank(r["backend"]), r["backend"]))
            for i, r in enumerate(members):
                value = _drawn_value(r)
                p90 = r.get("latency_ms_p90") if latency else None
                p99 = r.get("latency_ms_p99") if latency else None
                bars.append({
                    "backend": r["backend"], "group": label, "x": cursor + i, "value": value, "p90": p90, "p99": p99,
                    "top": max(v for v in (value, p90, p99) if v is not None), "color": colours[r["backend"]],
                })
            groups.append({"label": label, "center": cursor + (len(members) - 1) / 2})
            cursor += len(members) + 1  # one empty slot between groups
        tops = [b["top"] for b in bars]
        lows = [b["value"] for b in bars]
        single = f", batch {batches[0]}" if len(batches) == 1 else ""
        title = (f"{mode}: ms per call{single}, lower is better (bar p50, dot p90, cap p99; label p50)" if latency
                 else f"{mode}: samples/s{single}, higher is better")
        panels.append({"mode": mode, "unit": "ms" if latency else "samples/s", "title": title,
                       "log": max(tops) / min(lows) > _LOG_SPAN, "groups": groups, "bars": bars})
    return {"panels": panels, "colors": colours, "not_drawn": left, "note": _note(left)}


def _default_title(rows: list[dict], layout: dict) -> str:
    units = {p["unit"] for p in layout["panels"]}
    parts = (["throughput"] if "samples/s" in units else []) + (["batch-1 latency"] if "ms" in units else [])
    shown = [r for r in rows if _drawn_value(r) is not None] or rows
    devices = sorted({str(r.get("device")) for r in shown})
    dtypes = sorted({str(r.get("dtype")) for r in shown})
    head = " and ".join(parts) or "benchmark"
    return f"{head[0].upper()}{head[1:]} — device {', '.join(devices)}, {', '.join(dtypes)}"


def chart_figure(rows: list[dict], title: str | None = None):
    """The chart of `chart_layout(rows)` as a matplotlib Figure (object-oriented API, Agg canvas; pyplot untouched):
    one panel per mode stacked, the bars of each group packed, a value label on each bar, latency's p90 (dot) and p99
    (cap) on a whisker above its p50 bar, one legend of the backends drawn, and the caption about the rows left to
    the tables."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layout = chart_layout(rows)
    panels = layout["panels"]
    slots = max((max(b["x"] for b in p["bars"]) + 1 for p in panels), default=1)
    width = min(max(8.0, 4.0 + 0.42 * slots), 38.0)  # the legend of backends takes ~1.8 in on the right
    fig = Figure(figsize=(width, 3.4 * max(len(panels), 1) + 1.3), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_default_title(rows, layout) if title is None else title, fontsize=11)
    if layout["note"]:
        fig.supxlabel(layout["note"], fontsize=8, color="#444444")
    if not panels:
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "nothing measured: every row is listed in the tables with its reason" if rows
                else "no rows", transform=ax.transAxes, ha="center", va="center", color="#555555")
        return fig
    rotate = (width - 3.4) / slots < 0.4
    for ax, panel in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        bars = panel["bars"]
        if panel["log"]:
            ax.set_yscale("log")
        for bar in bars:
            ax.bar(bar["x"], bar["value"], 0.85, color=bar["color"], zorder=2, gid=bar["backend"])
        whiskers = [b for b in bars if b["p99"] is not None or b["p90"] is not None]
        if whiskers:
            ax.vlines([b["x"] for b in whiskers], [b["value"] for b in whiskers], [b["top"] for b in whiskers],
                      color="black", linewidth=0.9, zorder=3)
            p99 = [b for b in whiskers if b["p99"] is not None]
            ax.plot([b["x"] for b in p99], [b["p99"] for b in p99], linestyle="none", marker="_", markersize=9,
                    markeredgewidth=1.4, color="black", zorder=4, label="p99")
            p90 = [b for b in whiskers if b["p90"] is not None]
            ax.plot([b["x"] for b in p90], [b["p90"] for b in p90], linestyle="none", marker="o", markersize=3.2,
                    color="black", zorder=4, label="p90")
            ax.legend(fontsize=7, loc="best", framealpha=0.85)
        for bar in bars:
            ax.annotate(_fmt(bar["value"]), (bar["x"], bar["top"]), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6.5, rotation=90 if rotate else 0)
        ax.set_xticks([g["center"] for g in panel["groups"]])
        ax.set_xticklabels([g["label"] for g in panel["groups"]], fontsize=8)
        ax.set_xlim(-0.75, max(b["x"] for b in bars) + 0.75)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(panel["unit"] + (" (log scale)" if panel["log"] else ""))
        ax.grid(axis="y", alpha=0.3, zorder=0)
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * (4.0 if panel["log"] else 1.25))  # head-room for the value labels
    handles = [Patch(facecolor=colour, label=backend) for backend, colour in layout["colors"].items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, title="backend",
               title_fontsize=8)
    return fig


def render_chart(rows: list[dict], path: str, title: str | None = None) -> str:
    """Bar chart of the rows that ran (`chart_figure`): a panel per mode with measured rows, throughput in samples/s
    (higher is better) and batch-1 latency in ms (p50 bars, p90 and p99 marked; lower is better), each backend in its
    own colour. Rows that did not run are left to the tables (the caption counts them). A log scale is used when a
    panel spans more than a factor of 50. Written atomically; returns `path`."""
    fig = chart_figure(rows, title)
    checkpoints.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    return path
