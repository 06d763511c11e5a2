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
    page = markdown_to_html("# Title\n\n- a **bold** `code` item\n\n| a | b |\n|---|--:|\n| 1 | <2> |\n\n![chart](x.png)\n",
                            "t", png)
    assert "<h1>Title</h1>" in page and "<b>bold</b>" in page and "<code>code</code>" in page
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>&lt;2&gt;</td>" in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "src=\"http" not in page and "<link" not in page
