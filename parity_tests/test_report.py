"""`twins report` rendering: the parity matrix and the self-contained HTML page (no model runs here;
the parity rows and benchmark rows it renders are produced and tested elsewhere)."""
from __future__ import annotations

import base64

from twins_cli.report import parity_table
from twins_cli.report import markdown_to_html, parity_matrix


def rows():
    def row(model, backend, check, error, passed):
        return {"model": model, "backend": backend, "check": check, "error": error, "bound": 1e-5,
                "passed": passed, "detail": "" if passed else "first diverging layer: layer2.1.bn1 (rel err 3.0e-02)",
                "meta": {"batch": 2, "size": 64, "train_dtype": "float64", "device": "cpu"}}

    return [
        row("resnet18", "tensorflow", "eval_output", 9.2e-7, True),
        row("resnet18", "tensorflow", "gradients", 6.8e-14, True),
        row("resnet18", "jax", "eval_output", 3.0e-2, False),
        row("resnet18", "jax", "gradients", 6.4e-8, True),
    ]


def test_parity_matrix_counts_checks_and_names_failures():
    text = parity_matrix(rows(), ["tensorflow", "jax", "torch"])
    line = next(l for l in text.splitlines() if l.startswith("| resnet18"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["resnet18", "2/2 ok, eval 9.2e-07", "1/2 ok, eval 3.0e-02 — FAILED: eval_output", "-"]


def test_parity_table_shows_the_first_diverging_layer_of_a_failure():
    text = parity_table(rows(), ["tensorflow", "jax"])
    assert "| eval_output | 9.2e-07 ok | 3.0e-02 FAIL (first diverging layer: layer2.1.bn1" in text


def test_html_page_is_self_contained():
    png = b"\x89PNG\r\n\x1a\nfake"
    page = markdown_to_html("# Title\n\n- a **bold** `code` item\n\n| a | b |\n|---|--:|\n| 1 | <lambda> |\n\n"
                            "![chart](x.png)\n\nfailed: <img src=x onerror=alert(1)>\n", "t", png)
    flat = page.replace("\n", "")
    assert "<h1>Title</h1>" in page and "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "<th>a</th><th style=\"text-align: right;\">b</th>" in flat
    # An error quoted in a row is text (the report must not drop "<lambda>" or run a tag in an error message).
    assert "<td>1</td><td style=\"text-align: right;\">&lt;lambda&gt;</td>" in flat
    assert "failed: &lt;img src=x onerror=alert(1)&gt;" in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "src=\"http" not in page and "<link" not in page


def bench_row(backend, mode, batch, *, p50=None, sps=None, device="cpu", status="ok", export_error=None, ratio=None):
    return {"model": "resnet50", "backend": backend, "mode": mode, "batch": batch, "device": device, "dtype": "float32",
            "status": status, "latency_ms_p50": p50, "latency_ms_p99": None if p50 is None else 2 * p50,
            "samples_per_sec": sps, "ratio_to_torch": ratio, "export_error": export_error, "compiler": backend,
            "peer_of": None}


def test_deployment_table_picks_the_fastest_path_per_target_and_its_error():
    from twins_cli.report import deployment_table

    bench = [
        bench_row("torch", "latency", 1, p50=40.0), bench_row("onnxruntime", "latency", 1, p50=10.0, export_error=7e-7),
        bench_row("keras-jax", "latency", 1, p50=20.0), bench_row("litert", "latency", 1, p50=25.0, export_error=9e-7),
        bench_row("torch", "infer", 32, sps=30.0, ratio=1.0), bench_row("keras-jax", "infer", 32, sps=45.0, ratio=1.5),
        bench_row("openvino", "infer", 32, status="error", sps=None),
    ]
    parity = [{"model": "resnet50", "backend": "jax", "check": "eval_output", "error": 2.1e-6}]
    lines = {l.split("|")[2].strip(): [c.strip() for c in l.strip("|").split("|")] for l in
             deployment_table(bench, parity).splitlines()[2:]}
    assert lines["CPU server, batch 1"][2:] == ["onnxruntime (onnxruntime)", "10.00 ms p50 (p99 20.00)", "4.00x",
                                                 "7.0e-07 (artifact vs eager twin)", "4"]
    assert lines["CPU server, batch 32"][2:] == ["keras-jax (keras-jax)", "45 img/s", "1.50x",
                                                  "2.1e-06 (eval vs torch twin)", "2"]
    assert lines["mobile (LiteRT), batch 1"][2:5] == ["litert (litert)", "25.00 ms p50 (p99 50.00)", "1.60x"]
    assert lines["GPU server, batch 1"][2] == "no GPU in this run"
    # A slower path must not win: swap the figures and the winner changes with them.
    bench[1]["latency_ms_p50"] = 50.0
    assert "keras-jax" in next(l for l in deployment_table(bench, parity).splitlines() if "CPU server, batch 1" in l)


# ---------------------------------------------------------------------------------------------
# The benchmark chart (`benchmarks.report`): synthetic rows, no model runs; the figure itself is inspected (its axes,
# bars, markers and legend), not its pixels.


def chart_rows():
    """What `make demo` measures (resnet18 at 64 px, the five framework backends and the six export runtimes; train
    and infer at batch 32, batch-1 latency), with its n/a rows: the export runtimes do not train, torch-compile's
    training step and batch-1 program are left out of the quick sweep. Latency rows carry samples/s as the workers
    write them (1000 / p50): the chart must plot their ms. A second model whose rows all failed has no ok row."""
    from benchmarks import schema

    def row(backend, mode, batch, status="ok", sps=None, p50=None, model="resnet18"):
        return {"model": model, "backend": backend, "mode": mode, "batch": batch, "img_size": 64, "device": "cpu",
                "dtype": "float32", "status": status, "error": None if status == "ok" else "why it did not run",
                "samples_per_sec": sps, "latency_ms_p50": p50, "latency_ms_p90": None if p50 is None else p50 * 1.2,
                "latency_ms_p99": None if p50 is None else p50 * 1.5, "peer_of": None}

    rows = []
    for i, backend in enumerate(schema.DEFAULT_BACKENDS + schema.EXPORT_BACKENDS):
        if backend in schema.EXPORT_BACKENDS:
            rows.append(row(backend, "train", 32, status=schema.STATUS_NOT_APPLICABLE))
        elif backend == "torch-compile":
            rows.append(row(backend, "train", 32, status=schema.STATUS_NOT_MEASURED))
        else:
            rows.append(row(backend, "train", 32, sps=40.0 + i))
        rows.append(row(backend, "infer", 32, sps=100.0 + 10 * i))
        if backend == "torch-compile":
            rows.append(row(backend, "latency", 1, status=schema.STATUS_NOT_MEASURED))
        else:
            rows.append(row(backend, "latency", 1, sps=1000 / (5.0 + i), p50=5.0 + i))
    # A failed row may carry a figure measured before it failed: it is still not drawn.
    rows += [row(b, "infer", 8, status=schema.STATUS_ERROR, sps=5.0, model="resnet50") for b in ("torch", "keras-jax")]
    return rows


def drawn_value(row):
    return row["latency_ms_p50"] if row["mode"] == "latency" else row["samples_per_sec"]


def figure_problems(fig, rows):
    """Everything wrong with a rendered chart of `rows`, read off the figure: a panel per mode with an ok row and no
    other; in each, one bar per ok row (its backend, its figure: p50 ms for latency) and none for an n/a row; latency
    in ms with its p90 and p99 marked; bars packed (no empty group, no empty half); one legend of the backends drawn,
    in colours pairwise distinct, each backend's bars in its legend colour."""
    from matplotlib.colors import to_hex

    from benchmarks import report

    problems = []
    ok = [r for r in rows if r["status"] == "ok"]
    wanted = [m for m in ("train", "infer", "latency") if any(r["mode"] == m for r in ok)]
    panels = [ax.get_title().split(":")[0] for ax in fig.axes]
    if panels != wanted:
        problems.append(f"panels {panels}, expected {wanted} (one per mode with an ok row)")
    legend_colour = {}
    if len(fig.legends) != 1:
        problems.append(f"{len(fig.legends)} figure legends")
    else:
        legend = fig.legends[0]
        legend_colour = {t.get_text(): to_hex(h.get_facecolor())
                         for t, h in zip(legend.get_texts(), legend.legend_handles)}
        expected = sorted({r["backend"] for r in ok})
        if sorted(legend_colour) != expected:
            problems.append(f"legend {sorted(legend_colour)}, expected the backends drawn {expected}")
        clashes = report.colour_clashes(legend_colour, 20)
        if clashes:
            problems.append(f"legend colours too close: {clashes}")
    for ax, mode in zip(fig.axes, panels):
        bars = ax.patches
        if not bars:
            problems.append(f"{mode}: empty panel")
            continue
        got = sorted((b.get_gid(), round(b.get_height(), 6)) for b in bars)
        expected = sorted((r["backend"], round(drawn_value(r), 6)) for r in ok if r["mode"] == mode)
        if got != expected:
            problems.append(f"{mode}: bars {got}, expected one per ok row {expected}")
        for b in bars:
            if legend_colour.get(b.get_gid()) != to_hex(b.get_facecolor()):
                problems.append(f"{mode}: a {b.get_gid()} bar is not in its legend colour")
        xs = sorted(b.get_x() + b.get_width() / 2 for b in bars)
        if any(right - left > 2.01 for left, right in zip(xs, xs[1:])) or \
                ax.get_xlim()[0] < xs[0] - 1 or ax.get_xlim()[1] > xs[-1] + 1:
            problems.append(f"{mode}: bars not packed (gaps or an empty half): x {xs}, xlim {ax.get_xlim()}")
        if mode == "latency":
            if not ax.get_ylabel().startswith("ms") or "lower is better" not in ax.get_title():
                problems.append(f"latency plotted as {ax.get_ylabel()!r}, {ax.get_title()!r}")
            marked = sorted(round(y, 6) for line in ax.lines for y in line.get_ydata())
            percentiles = sorted(round(r[k], 6) for r in ok if r["mode"] == mode
                                 for k in ("latency_ms_p90", "latency_ms_p99"))
            if marked != percentiles:
                problems.append(f"latency markers {marked}, expected p90 and p99 {percentiles}")
        elif "samples/s" not in ax.get_ylabel():
            problems.append(f"{mode} plotted as {ax.get_ylabel()!r}")
    return problems


def test_every_backend_has_its_own_colour_even_an_unknown_one():
    from benchmarks import report, schema

    known = report.backend_colors(schema.BACKENDS)
    assert list(known) == list(schema.BACKENDS) and all(name in report._COLORS for name in known)
    assert report.colour_clashes(known, 25) == []
    # A backend keeps its colour whichever others a chart has.
    assert report.backend_colors(["openvino", "torch"]) == {"openvino": known["openvino"], "torch": known["torch"]}
    # Names the palette does not know take fallback colours, then generated ones: never a colour twice in a chart,
    # and the fallback colours read as other colours too.
    unknown = [f"runtime-{i}" for i in range(len(report._FALLBACK_COLORS) + 6)]
    mixed = report.backend_colors([*schema.BACKENDS, *unknown])
    assert len(set(mixed.values())) == len(mixed) == len(schema.BACKENDS) + len(unknown)
    first = [*schema.BACKENDS, *unknown[:len(report._FALLBACK_COLORS)]]
    assert report.colour_clashes({name: mixed[name] for name in first}, 20) == []
    # The same check catches a repeated colour and two blues a reader cannot tell apart.
    repeated = {**known, "openvino": known["keras-tensorflow"]}
    assert ("keras-tensorflow", "openvino", 0.0) in report.colour_clashes(repeated, 25)
    assert report.colour_clashes({"keras-tensorflow": "#1f77b4", "openvino": "#3a75c4"}, 25)


def test_chart_layout_draws_only_rows_that_ran_packed_with_latency_in_ms():
    from benchmarks import report

    rows = chart_rows()
    layout = report.chart_layout(rows)
    panels = {p["mode"]: p for p in layout["panels"]}
    assert list(panels) == ["train", "infer", "latency"]
    for panel in layout["panels"]:
        # No empty panel and no empty group (resnet50's rows all failed: it has no slot anywhere); the bars of each
        # group side by side, one empty slot between groups.
        assert panel["bars"] and [g["label"] for g in panel["groups"]] == ["resnet18\n64px"]
        assert [b["x"] for b in panel["bars"]] == list(range(len(panel["bars"])))
    assert [b["backend"] for b in panels["train"]["bars"]] == ["torch", "keras-tensorflow", "keras-jax", "keras-torch"]
    assert panels["train"]["unit"] == "samples/s" and "higher is better" in panels["train"]["title"]
    # n/a rows: no bar, all of them in `not_drawn`, counted in the caption.
    drawn = {(p["mode"], b["backend"]) for p in layout["panels"] for b in p["bars"]}
    assert drawn == {(r["mode"], r["backend"]) for r in rows if r["status"] == "ok"}
    assert len(layout["not_drawn"]) == 10 == sum(r["status"] != "ok" for r in rows)
    assert layout["note"] == ("10 n/a rows (not applicable 6, error 2, not measured 2): not drawn, listed with their "
                              "reasons in the tables")
    # Latency: its own panel, in ms (p50 bars, p90 and p99 beside them), never samples/s.
    latency = panels["latency"]
    assert latency["unit"] == "ms" and "lower is better" in latency["title"] and "batch 1" in latency["title"]
    by_backend = {b["backend"]: b for b in latency["bars"]}
    row = next(r for r in rows if r["backend"] == "litert" and r["mode"] == "latency")
    assert (by_backend["litert"]["value"], by_backend["litert"]["p90"], by_backend["litert"]["p99"]) == \
        (row["latency_ms_p50"], row["latency_ms_p90"], row["latency_ms_p99"]) != (row["samples_per_sec"],) * 3
    assert all(b["color"] == layout["colors"][b["backend"]] for p in layout["panels"] for b in p["bars"])
    # A mode with no ok row has no panel.
    without = report.chart_layout([r for r in rows if not (r["mode"] == "train" and r["status"] == "ok")])
    assert [p["mode"] for p in without["panels"]] == ["infer", "latency"]


def test_rendered_chart_matches_its_rows_and_the_check_catches_each_fault(tmp_path):
    from matplotlib.patches import Rectangle

    from benchmarks import report

    rows = chart_rows()
    fig = report.chart_figure(rows)
    assert figure_problems(fig, rows) == []
    assert fig.get_supxlabel().startswith("10 n/a rows")
    for subset in ([r for r in rows if r["mode"] != "train"], [r for r in rows if r["backend"] == "litert"]):
        assert figure_problems(report.chart_figure(subset), subset) == []
    path = report.render_chart(rows, str(tmp_path / "chart.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # Each fault the issue saw, put into a good figure by hand, is caught by the same check.
    def broken(fault):
        fig = report.chart_figure(rows)
        train, infer, latency = fig.axes
        fault(fig, train, infer, latency)
        return " / ".join(figure_problems(fig, rows))

    handles = lambda fig: fig.legends[0].legend_handles  # noqa: E731
    assert "legend colours too close" in broken(
        lambda fig, *axes: handles(fig)[3].set_facecolor(handles(fig)[2].get_facecolor()))
    assert "empty panel" in broken(lambda fig, *axes: fig.add_subplot(5, 1, 5).set_title("train: samples/s"))
    assert "train: bars" in broken(lambda fig, train, *rest: train.add_patch(
        Rectangle((4, 0), 0.85, 1.0, gid="torch-compile")))  # a bar for an n/a row
    assert "an empty half" in broken(lambda fig, train, *rest: train.set_xlim(-0.75, 8.75))
    assert "latency plotted as 'samples/s'" in broken(lambda fig, *axes: axes[2].set_ylabel("samples/s"))
    assert "latency markers" in broken(lambda fig, *axes: axes[2].lines[0].set_ydata([0.0] * 10))


def test_deployment_table_marks_every_ratio_of_a_contended_run():
    """The run's own meta (`benchmarks.schema.contention`, the rule of the harness's load warning) decides: a run that
    started at a load average over half its CPU count gets every ratio marked and a line under the table; an idle
    run's table is the one printed without a meta."""
    from benchmarks import schema
    from twins_cli.report import chart_caption, deployment_table

    bench = [
        bench_row("torch", "latency", 1, p50=664.0), bench_row("litert", "latency", 1, p50=9.7, export_error=9e-7),
        bench_row("torch", "infer", 32, sps=30.0, ratio=1.0), bench_row("keras-jax", "infer", 32, sps=45.0, ratio=1.5),
    ]
    contended = {"load_average_before": [4.27, 3.9, 2.1], "cpu_count": 2}
    idle = {"load_average_before": [0.6, 1.3, 1.5], "cpu_count": 2}

    def ratios(text):
        return [l.strip("|").split("|")[4].strip() for l in text.splitlines()[2:] if l.startswith("| resnet50")]

    marked = deployment_table(bench, None, contended)
    measured = [cell for cell in ratios(marked) if cell != "—"]
    assert len(measured) == 3 and "68.45x (contended run: load 4.27 on 2 CPUs)" in measured
    assert all(cell.endswith("x (contended run: load 4.27 on 2 CPUs)") for cell in measured)
    assert "Every ratio above comes from a contended run" in marked.splitlines()[-1]
    plain = deployment_table(bench, None, idle)
    assert plain == deployment_table(bench, None) and "contended" not in plain
    assert "68.45x" in ratios(plain)
    assert "Contended run" in chart_caption(bench, contended) and "ontended" not in chart_caption(bench, idle)
    # The threshold is the harness's: over half the CPU count, on the 1-minute load average it recorded.
    assert schema.contention({"load_average_before": [1.01, 0, 0], "cpu_count": 2}) == "load 1.01 on 2 CPUs"
    assert schema.contention({"load_average_before": [1.0, 9, 9], "cpu_count": 2}) is None
    assert schema.contention({"cpu_count": 2}) is None and schema.contention(None) is None
