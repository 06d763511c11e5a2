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
