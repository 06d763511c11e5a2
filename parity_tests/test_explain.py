"""`twins explain` (`twins_cli.pairing`, `twins_cli.explain`) and the pages in a real browser: the pairing of
each Keras definition with its torch twin read from the code, a stale docstring and a lost twin shown, one page
per registered model rendered in headless Chromium with no console message and no blank screenshot, and the
report's HTML (Python-Markdown) rendered the same way. Builds the models through a `twins explain` process,
once, in the tensorflow pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.browser import problems, render
from parity_tests.conftest import BACKEND
from twins import registry
from twins_cli.pairing import pair_files

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="framework-free or its own process: the tensorflow "
                                                                "pass only")


def names(rows):
    return {(r.keras.name if r.keras else None, r.torch.name if r.torch else None): r for r in rows}


def test_resnet_definitions_pair_by_docstring_and_by_name():
    rows = names(pair_files(ROOT / "keras_impl/resnet.py", ROOT / "torch_impl/resnet.py"))
    assert rows[("basic_block", "BasicBlock")].how == "docstring"
    assert rows[("make_layer", "ResNet._make_layer")].how == "docstring"
    assert rows[("resnet50", "resnet50")].how == "name" and rows[("_resnet", "_resnet")].how == "name"
    assert (None, "ResNet.forward") in rows  # the torch forward has no Keras function: the graph is the wiring
    assert not any(r.problem for r in rows.values())


def test_a_stale_docstring_and_a_lost_twin_show(tmp_path):
    """Shown failing: the torch BasicBlock renamed (the Keras docstring now names a class the torch file lacks)
    and the Keras resnet152 builder deleted (its torch twin stands alone)."""
    keras_src = (ROOT / "keras_impl/resnet.py").read_text()
    torch_src = (ROOT / "torch_impl/resnet.py").read_text().replace("class BasicBlock(", "class PlainBlock(")
    start = keras_src.index("def resnet152(")
    keras_src = keras_src[:start]
    (tmp_path / "k.py").write_text(keras_src)
    (tmp_path / "t.py").write_text(torch_src)
    rows = pair_files(tmp_path / "k.py", tmp_path / "t.py")
    stale = next(r for r in rows if r.keras is not None and r.keras.name == "basic_block")
    assert stale.torch is None and "names BasicBlock, which the torch file does not define" in stale.problem
    assert any(r.keras is None and r.torch.name == "PlainBlock" for r in rows)
    assert any(r.keras is None and r.torch.name == "resnet152" for r in rows)


def test_naming_rule_pairs_snake_case_and_private_methods(tmp_path):
    (tmp_path / "k.py").write_text('def conv_unit(x):\n    pass\n\n\ndef grow(x):\n    pass\n\n\nLIMIT = 3\n')
    (tmp_path / "t.py").write_text('class ConvUnit:\n    pass\n\n\nclass Net:\n    def _grow(self):\n        pass\n\n'
                                   '    def forward(self, x):\n        pass\n\n\nLIMIT = 3\n')
    rows = names(pair_files(tmp_path / "k.py", tmp_path / "t.py"))
    assert rows[("conv_unit", "ConvUnit")].how == "name" and rows[("grow", "Net._grow")].how == "name"
    assert rows[("LIMIT", "LIMIT")].how == "name" and (None, "Net.forward") in rows and (None, "Net (class)") in rows


def test_layer_table_marks_what_does_not_map(monkeypatch):
    """Shown failing: a torch twin whose classifier has another width and whose last BatchNorm is gone."""
    from torch import nn

    import torch_impl
    from twins_cli.explain import layer_table

    build = torch_impl.build

    def broken(name, **kwargs):
        model = build(name, **kwargs)
        model.fc = nn.Linear(512, 10)
        model.layer4[1].bn2 = nn.Identity()
        return model

    monkeypatch.setattr(torch_impl, "build", broken)
    table, counts = layer_table("resnet18")
    assert counts["mismatched"] == 6  # fc.weight, fc.bias; bn2's weight, bias, running mean and variance
    assert "(10, 512), where the bridge makes (1000, 512)" in table
    assert table.count("missing in the torch twin") == 4


def test_docstrings_are_checked_from_both_sides(tmp_path):
    """A torch docstring naming a Keras function that is not there, and two Keras docstrings claiming one torch
    class, are both reported."""
    (tmp_path / "k.py").write_text('def block(x):\n    """Twin of `Block`."""\n\n\ndef block_v2(x):\n'
                                   '    """Twin of `Block`."""\n')
    (tmp_path / "t.py").write_text('class Block:\n    pass\n\n\ndef head():\n    """Twin of `keras_impl.x.head_fn`."""\n')
    rows = pair_files(tmp_path / "k.py", tmp_path / "t.py")
    problems = {(r.keras.name if r.keras else r.torch.name): r.problem for r in rows if r.problem}
    assert problems == {"block_v2": "its docstring names Block, which block already mirrors",
                        "head": "its docstring names head_fn, which the Keras file does not define"}


def test_explain_writes_a_page_per_registered_model_and_they_mirror(explained):
    out, table, log = explained
    assert (out / "index.json").is_file(), log
    index = json.loads((out / "index.json").read_text())
    assert [s["model"] for s in index] == registry.names()
    for s in index:
        assert s["problems"] == 0 and s["mismatched"] == 0, s
        assert s["pairs"] >= 3 and s["variables"] > 0
    assert "| [resnet50](explain/resnet50.html) | 14 |" in table  # the report's links
    page = (out / "resnet50.html").read_text()
    # layer1.0.conv1 of resnet50: a 1x1 conv from 64 to 64 channels, in each layout
    assert "layer1-0-conv1" in page and "layer1.0.conv1.weight" in page
    assert "(1, 1, 64, 64)" in page and "(64, 64, 1, 1)" in page
    assert "transpose (kh, kw, in, out) -&gt; (out, in, kh, kw)" in page and "pass 3.0e-07" in page
    assert not any(tag in page for tag in ("<script", "<link", " src=")), "a page that needs nothing else, no JS"


@pytest.mark.parametrize("model", registry.names())
def test_explain_page_renders_in_chromium(explained, model, tmp_path):
    out, _, log = explained
    assert (out / f"{model}.html").is_file(), log
    result = render(out / f"{model}.html", tmp_path / f"{model}.png")
    assert problems(result, f"{model}: the Keras twin beside the torch twin") == []


def test_the_browser_check_catches_a_blank_page_and_a_console_error(tmp_path):
    """Shown failing: a page with a script error, and a page with nothing on it."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><h1>title</h1><script>notDefined();</script></body></html>")
    found = problems(render(broken, tmp_path / "broken.png"), "title")
    assert found and all(f.startswith("console: ") and "notDefined is not defined" in f for f in found)
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    found = problems(render(blank, tmp_path / "blank.png"), "title")
    assert found[0].startswith("blank screenshot") and "lacks 'title'" in found[1]


def test_report_html_renders_in_chromium(tmp_path):
    """The report page as build_report writes it (Python-Markdown: headings, lists, pipe tables, links, the chart
    as a data URI) renders with no console message."""
    import cv2
    import numpy as np

    from twins_cli.report import markdown_to_html, parity_table

    rows = [{"model": "resnet18", "backend": b, "check": "eval_output", "error": 2e-7, "bound": 1e-5, "passed": True,
             "detail": "", "meta": {"batch": 2, "size": 64}} for b in ("tensorflow", "jax", "torch")]
    chart = np.full((60, 200, 3), 255, np.uint8)
    cv2.rectangle(chart, (10, 10), (120, 50), (200, 80, 20), -1)
    text = ("# twins report\n\n- parity: **3 passed**\n\n![chart](benchmark.png)\n\n## Parity details\n\n"
            + parity_table(rows, ["tensorflow", "jax", "torch"]) + "\n\n[resnet18](explain/resnet18.html)\n")
    page = tmp_path / "report.html"
    page.write_text(markdown_to_html(text, "twins report", cv2.imencode(".png", chart)[1].tobytes()))
    result = render(page, tmp_path / "report.png", size=(1200, 700))
    assert problems(result, "Parity details") == []
    assert "<table>" in result["dom"] and "data:image/png;base64," in result["dom"]


def test_explain_refuses_an_unknown_model_and_a_bad_parity_file(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def explain(*args):
        return subprocess.run([sys.executable, "-m", "twins_cli.main", "explain", *args, "--out", str(tmp_path)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    done = explain("resnet51")
    assert done.returncode != 0 and "resnet51" in done.stderr and "resnet50" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "rows"}')
    done = explain("resnet18", "--parity", str(bad))
    assert done.returncode != 0 and "expected the rows twins parity --json writes" in done.stderr
    assert not (tmp_path / "resnet18.html").exists()
