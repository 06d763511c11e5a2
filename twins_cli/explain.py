"""`twins explain MODEL`: one self-contained HTML page that reads a model's two twins side by side.

    twins explain resnet50 [--out reports/explain] [--parity reports/latest/parity.json]
    twins explain all                     # every registered model, and index.html

The page has three parts, all generated from the code and the models:
1. the Keras file and the torch file in two columns, definition beside definition (`twins_cli.pairing`: the
   "Twin of" docstrings, then the naming rule), highlighted by Pygments; a definition without a twin has an
   empty cell that says so, and a docstring naming a twin the other file lacks is flagged;
2. the layer table: every Keras variable (layer name, variable, shape in Keras' layout) beside the torch key it
   maps to (module path, shape in torch's layout) and the bridge rule that maps one onto the other
   (`keras_impl.weights.slots`), built from both twins; torch tensors the bridge leaves out are listed too;
3. the model's parity rows from a `twins parity --json` or `twins report` file, when there is one.
"""
from __future__ import annotations

import functools
import html
import json
from pathlib import Path

import numpy as np

from twins import checkpoints, registry
from twins_cli.pairing import Row, pair_files

DEFAULT_OUT = "reports/explain"
DEFAULT_PARITY = "reports/latest/parity.json"

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1d1d1f}
h1{font-size:1.5em;margin:0 0 .3em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.summary{color:#444;margin:.2em 0 1em}
table.code{border-collapse:collapse;width:100%;table-layout:fixed}
table.code td{vertical-align:top;border-top:1px solid #ddd;padding:0;width:50%}
table.code th{text-align:left;padding:4px 8px;background:#f3f3f3;position:sticky;top:0}
.label{font-size:12px;padding:4px 8px;background:#fafafa;color:#555;border-top:1px solid #eee}
.label b{color:#1d1d1f}.docstring{color:#1a7f37}.name{color:#0a58ca}.problem{color:#b42318;font-weight:bold}
.none{font-size:12px;color:#999;padding:10px;font-style:italic;background:repeating-linear-gradient(45deg,#fbfbfb,
#fbfbfb 6px,#f4f4f4 6px,#f4f4f4 12px);height:100%}
.hl{overflow-x:auto;font-size:12px}.hl pre{margin:0;padding:6px 8px}
.hl .linenos{color:#aaa;padding-right:8px}
table.layers,table.parity{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.layers td,table.layers th,table.parity td,table.parity th{border:1px solid #ddd;padding:2px 6px;text-align:left}
table.layers td.shape{font-family:monospace}tr.missing td{background:#fdecea}tr.counter td{color:#888}
"""


@functools.lru_cache(maxsize=1)
def pygments_parts():
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return PythonLexer(), HtmlFormatter


def highlighted(source: str, start: int) -> str:
    from pygments import highlight

    lexer, formatter = pygments_parts()
    return highlight(source, lexer, formatter(cssclass="hl", linenos="inline", linenostart=start, wrapcode=True))


def code_rows(rows: list[Row], keras_file: str, torch_file: str) -> str:
    out = []
    for row in rows:
        k, t = row.keras, row.torch
        if k is not None and t is not None:
            how = ('<span class="docstring">paired by its "Twin of" docstring</span>' if row.how == "docstring"
                   else '<span class="name">paired by name</span>')
            label = f"<b>{html.escape(k.name)}</b> &harr; <b>{html.escape(t.name)}</b> &middot; {how}"
        else:
            unit = k or t
            side = "torch" if k is not None else "Keras"
            label = f"<b>{html.escape(unit.name)}</b> &middot; no {side} twin"
        if row.problem:
            label += f' &middot; <span class="problem">{html.escape(row.problem)}</span>'
        cells = []
        for unit, other in ((k, keras_file), (t, torch_file)):
            if unit is None:
                cells.append(f'<td><div class="none">no twin in {html.escape(other)}</div></td>')
            else:
                cells.append(f"<td>{highlighted(unit.source, unit.start)}</td>")
        out.append(f'<tr><td colspan="2" class="label">{label}</td></tr><tr>{"".join(cells)}</tr>')
    return "\n".join(out)


def layer_table(name: str) -> tuple[str, dict]:
    """The bridge's map of `name`, from both twins built with their defaults: HTML rows and counts."""
    import keras
    import torch

    import keras_impl
    import torch_impl
    from keras_impl.common import initial_values_not_drawn
    from keras_impl.weights import slots

    with torch.device("meta"):  # names and shapes only: no memory, no initial values drawn
        tmodel = torch_impl.build(name)
    state = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    del tmodel
    with initial_values_not_drawn():  # the table reads names and shapes only
        kmodel = keras_impl.build(name)
    lines, bridged, mismatched = [], set(), 0
    for slot in slots(kmodel):
        layer, variable = slot.variable.path.rsplit("/", 1) if "/" in slot.variable.path else ("", slot.variable.path)
        torch_shape = state.get(slot.key)
        expected = slot.torch_shape
        ok = torch_shape == expected
        mismatched += not ok
        bridged.add(slot.key)
        torch_cell = ("missing in the torch twin" if torch_shape is None else str(torch_shape) if ok
                      else f"{torch_shape}, where the bridge makes {expected}")
        lines.append(f"<tr{'' if ok else ' class=missing'}><td>{html.escape(layer)}</td><td>{html.escape(variable)}"
                     f"</td><td class=shape>{tuple(slot.variable.shape)}</td><td>{html.escape(slot.key)}</td>"
                     f"<td class=shape>{html.escape(torch_cell)}</td><td>{html.escape(slot.rule)}</td></tr>")
    left_out = [k for k in state if k not in bridged]
    for key in left_out:
        counter = checkpoints.is_counter(key)
        why = "not bridged: torch's count of BatchNorm steps, which Keras does not keep" if counter \
            else "MISSING: no Keras variable maps to it"
        mismatched += not counter
        lines.append(f"<tr class={'counter' if counter else 'missing'}><td colspan=3></td><td>{html.escape(key)}</td>"
                     f"<td class=shape>{state[key]}</td><td>{why}</td></tr>")
    head = ("<tr><th>Keras layer</th><th>variable</th><th>Keras shape</th><th>torch key</th><th>torch shape</th>"
            "<th>bridge rule</th></tr>")
    counts = {"variables": len(bridged), "torch_keys": len(state), "mismatched": mismatched,
              "params": int(sum(np.prod(s) for s in (tuple(v.shape) for v in kmodel.trainable_variables)))}
    keras.backend.clear_session(free_memory=False)  # its gc.collect: 4.4 of 15 s for the 18 pages
    return f"<table class=layers>{head}\n" + "\n".join(lines) + "</table>", counts


def parity_rows_of(name: str, rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["model"] == name or r["model"].startswith(name + "-")]


def parity_section(name: str, rows: list[dict] | None, source: str | None) -> str:
    if rows is None:
        return (f"<p>No parity run found ({html.escape(str(source))}). <code>twins parity {name} --json FILE</code> "
                f"or <code>make demo</code> writes one; <code>twins explain {name} --parity FILE</code> shows it.</p>")
    mine = parity_rows_of(name, rows)
    if not mine:
        return f"<p>{html.escape(str(source))} holds no row of {name}.</p>"
    backends = list(dict.fromkeys(r["backend"] for r in mine))
    checks = list(dict.fromkeys((r["model"], r["check"]) for r in mine))
    cell = {(r["model"], r["check"], r["backend"]): r for r in mine}
    out = ["<table class=parity><tr><th>model</th><th>check</th>" + "".join(f"<th>{html.escape(b)}</th>"
                                                                          for b in backends) + "</tr>"]
    for model, check in checks:
        tds = []
        for b in backends:
            r = cell.get((model, check, b))
            if r is None:
                tds.append("<td></td>")
            elif not r.get("supported", True):
                tds.append("<td>n/a</td>")
            else:
                err = r.get("error")
                text = "—" if err is None else f"{err:.1e}"
                tds.append(f"<td>{'pass' if r['passed'] else '<b>FAIL</b>'} {text}</td>")
        out.append(f"<tr><td>{html.escape(model)}</td><td>{html.escape(check)}</td>{''.join(tds)}</tr>")
    passed = sum(1 for r in mine if r["passed"])
    return (f"<p>{passed} of {len(mine)} rows pass (from {html.escape(str(source))}; each cell: the result and the "
            "error against the torch twin).</p>" + "\n".join(out) + "</table>")


def page(name: str, parity_rows: list[dict] | None = None, parity_source: str | None = None) -> tuple[str, dict]:
    """The HTML page of `name` and its counts (pairs, units without a twin, problems, layer table)."""
    import keras_impl
    import torch_impl

    info = registry.get(name)
    root = Path(__file__).resolve().parent.parent
    keras_path, torch_path = Path(keras_impl.source_file(name)), Path(torch_impl.source_file(name))
    keras_file, torch_file = (str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                              for p in (keras_path, torch_path))
    rows = pair_files(keras_path, torch_path)
    pairs = [r for r in rows if r.keras is not None and r.torch is not None]
    alone = [r for r in rows if r.keras is None or r.torch is None]
    problems = [r for r in rows if r.problem]
    layers, counts = layer_table(name)
    _, formatter = pygments_parts()
    style = formatter(cssclass="hl").get_style_defs(".hl")
    summary = (f"{len(pairs)} definitions paired ({sum(r.how == 'docstring' for r in pairs)} by docstring, "
               f"{sum(r.how == 'name' for r in pairs)} by name), {len(alone)} without a twin"
               + (f", <span class=problem>{len(problems)} docstrings naming a missing twin</span>" if problems else ""))
    body = f"""<h1>{html.escape(name)}: the Keras twin beside the torch twin</h1>
<p class=summary>{html.escape(info.description) if getattr(info, "description", "") else ""}
<code>{html.escape(keras_file)}</code> &harr; <code>{html.escape(torch_file)}</code>: {summary}.
Layer names are torch module paths with <code>.</code> as <code>-</code>; one rule per layer kind maps the weights.</p>
<h2>The code, definition by definition</h2>
<table class=code><tr><th>{html.escape(keras_file)} (Keras 3, NHWC)</th><th>{html.escape(torch_file)} (torch, NCHW)</th></tr>
{code_rows(rows, keras_file, torch_file)}
</table>
<h2>The layer table: Keras variables and torch keys</h2>
<p class=summary>{counts['variables']} Keras variables, {counts['torch_keys']} torch state_dict entries,
{counts['params']:,} trainable parameters; {counts['mismatched']} mismatches (highlighted red). Built from
<code>keras_impl.build("{name}")</code> and <code>torch_impl.build("{name}")</code> with their defaults.</p>
{layers}
<h2>Parity</h2>
{parity_section(name, parity_rows, parity_source)}
"""
    text = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>twins explain {html.escape(name)}"
            f"</title><style>{STYLE}{style}</style></head><body>\n{body}</body></html>\n")
    return text, {"pairs": len(pairs), "alone": len(alone), "problems": len(problems), **counts}


def read_parity(path: str | None) -> tuple[list[dict] | None, str | None]:
    source = path or DEFAULT_PARITY
    if not Path(source).is_file():
        if path:
            raise SystemExit(f"--parity {path}: no such file (twins parity MODEL --json FILE writes one)")
        return None, source
    try:
        rows = json.loads(Path(source).read_text())
        if not isinstance(rows, list) or (rows and not {"model", "check", "backend", "passed"} <= set(rows[0])):
            raise ValueError("not a list of parity rows")
    except ValueError as exc:
        raise SystemExit(f"--parity {source}: expected the rows twins parity --json writes ({exc})") from None
    return rows, source


def write_pages(names: list[str], out_dir: str | Path, parity_rows=None, parity_source=None, log=print) -> list[dict]:
    """One page per model in `out_dir` (and index.html when there are several); returns one summary each."""
    out = Path(out_dir)
    summaries = []
    for name in names:
        text, counts = page(name, parity_rows, parity_source)
        path = checkpoints.write_atomic(out / f"{name}.html", lambda tmp: tmp.write_text(text))
        summaries.append({"model": name, "path": str(path), **counts})
        log(f"wrote {path}: {counts['pairs']} pairs, {counts['alone']} without a twin, {counts['problems']} "
            f"docstring problems; {counts['variables']} variables, {counts['mismatched']} layer-table mismatches")
    if len(names) > 1:
        items = "\n".join(f"<li><a href='{s['model']}.html'>{s['model']}</a>: {s['pairs']} pairs, {s['alone']} "
                          f"without a twin, {s['variables']} variables</li>" for s in summaries)
        index = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>twins explain</title><style>{STYLE}"
                 f"</style></head><body><h1>The twins side by side</h1><ul>{items}</ul></body></html>\n")
        checkpoints.write_atomic(out / "index.html", lambda tmp: tmp.write_text(index))
        listing = json.dumps(summaries, indent=1) + "\n"
        checkpoints.write_atomic(out / "index.json", lambda tmp: tmp.write_text(listing))
    return summaries


def cmd_explain(args) -> int:
    from twins_cli.train import use_keras_backend

    names = registry.names() if args.model == "all" else [args.model]
    for name in names:
        registry.get(name)
    use_keras_backend(args.backend)
    rows, source = read_parity(args.parity)
    summaries = write_pages(names, args.out, rows, source)
    bad = [s for s in summaries if s["problems"] or s["mismatched"]]
    return 1 if bad else 0


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="a model's Keras and torch twins side by side, with the layer table and its "
                                       "parity rows, as a self-contained HTML page")
    p.add_argument("model", help=f"a registered model ({', '.join(registry.names())}) or all")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"folder for MODEL.html (default {DEFAULT_OUT})")
    p.add_argument("--parity", help=f"parity rows to show (twins parity --json; default {DEFAULT_PARITY} when "
                                    "it exists)")
    p.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                   help="Keras backend that builds the layer table (default: $KERAS_BACKEND, else jax)")
    p.set_defaults(func=cmd_explain)
