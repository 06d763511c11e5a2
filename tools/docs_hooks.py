"""MkDocs hooks of the documentation site (`make docs`; mkdocs.yml names this file).

Generated at build time, never written into docs/:
- a model card per registered model (`models/NAME.md`, and `models/index.md` listing them), from the registry
  (`twins.registry`, plugins included: a pair registered from outside this repository gets its card too) and the
  committed results: the parity rows of `docs/parity/all.json` (with `docs/parity/all.meta.json`: when, at which
  commit, with which versions), the training runs under `docs/training/`, the benchmark rows under
  `benchmarks/results/`;
- the `twins explain` page of every model (`explain/NAME.html`): `twins explain all` over the committed parity rows,
  as the report makes its pages (`twins_cli.report.explain_command`: on jax when it is installed), or the pages of
  the folder `TWINS_DOCS_EXPLAIN` names (the docs test hands over the pages its session already made).

A card says where each figure comes from (the file and its date); nothing on it is typed by hand.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "docs" / "parity" / "all.json"
PARITY_META = ROOT / "docs" / "parity" / "all.meta.json"
TRAINING = ROOT / "docs" / "training"
BENCHMARKS = ROOT / "benchmarks" / "results"
EXPLAIN_ENV = "TWINS_DOCS_EXPLAIN"
# Material's offline plugin makes search work from file:// with iframe-worker's shim, which its pages load from a
# CDN; `make docs` fetches the shim from the npm registry once (the Makefile's DOCS_SHIM) and the site serves it.
SHIM_ENV = "TWINS_DOCS_SHIM"
SHIM_CDN = "https://unpkg.com/iframe-worker/shim"
SHIM_SITE = "assets/javascripts/iframe-worker-shim.js"

# The training guide of each task (a family with a guide of its own goes there first).
GUIDES = {"vgg_slim": ("training/vgg19-food101.md", "VGG-19 on Food-101"),
          "saliency": ("training/saliency.md", "the saliency U-Net on SALICON"),
          "contrastive": ("training/simclr.md", "SimCLR on CIFAR-10"),
          "segmentation": ("training/pspnet.md", "PSPNet on a VOC-layout folder"),
          "classification": ("training/index.md", "fine-tuning a classifier (twins train)")}
PARITY_BACKENDS = {"tensorflow": "Keras on tensorflow", "jax": "Keras on jax", "torch": "Keras on torch",
                   "torch_impl": "the torch twin alone"}

_STATE: dict = {}


def _names() -> list[str]:
    if ROOT.as_posix() not in sys.path:
        sys.path.insert(0, ROOT.as_posix())
    from twins import registry

    registry.discover()
    return registry.names()


def on_config(config):
    """The model cards in the navigation: Models -> the index, then one page per registered model."""
    names = _names()
    _STATE["names"] = names
    cards = ["models/index.md"] + [{name: f"models/{name}.md"} for name in names]
    for i, entry in enumerate(config["nav"]):
        if isinstance(entry, dict) and "Models" in entry:
            config["nav"][i] = {"Models": cards}
    return config


def on_files(files, config):
    names = _STATE["names"]
    _committed_runs.cache_clear()  # each build reads the committed results afresh (`mkdocs serve` rebuilds)
    _committed_benchmarks.cache_clear()
    rows = json.loads(PARITY.read_text()) if PARITY.is_file() else []
    meta = json.loads(PARITY_META.read_text()) if PARITY_META.is_file() else {}
    files.append(File.generated(config, "models/index.md", content=models_index(names, rows)))
    for name in names:
        files.append(File.generated(config, f"models/{name}.md", content=card(name, rows, meta)))
    for name, page in explain_pages(names).items():
        files.append(File.generated(config, f"explain/{name}.html", content=page))
    return files


def on_post_build(config):
    """Serve the search's iframe-worker shim from the site, then refuse a page that still loads a script, a style
    sheet or a font from elsewhere: the site is read offline."""
    import re
    import shutil

    site = Path(config["site_dir"])
    shim = Path(os.environ.get(SHIM_ENV) or ROOT / ".cache" / "docs" / "iframe-worker-shim.js")
    pages = sorted(site.rglob("*.html"))
    if any(SHIM_CDN in p.read_text() for p in pages):
        if not shim.is_file():
            raise PluginError(f"the offline search needs iframe-worker's shim at {shim} (make docs fetches it from the "
                              f"npm registry: npm pack iframe-worker), or {SHIM_ENV} naming the file")
        shutil.copyfile(shim, site / SHIM_SITE)
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
    for page in pages:
        text = page.read_text()
        if SHIM_CDN in text:
            depth = len(page.relative_to(site).parts) - 1
            text = text.replace(SHIM_CDN, "../" * depth + SHIM_SITE)
            page.write_text(text)
        found = [m.group(0) for m in remote.finditer(text) if 'rel="canonical"' not in m.group(0)]
        if found:
            raise PluginError(f"{page.relative_to(site)} loads from the network, the site must read offline: "
                              f"{found[:3]}")


# ---------------------------------------------------------------------------------------------------------------
# What a card is made of


def variants_of(name: str) -> dict:
    from twins_cli.parity.variants import VARIANTS

    return {vid: v for vid, v in VARIANTS.items() if v.model == name}


def parity_rows(name: str, rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["model"] == name]


def parity_status(name: str, rows: list[dict]) -> str:
    mine = parity_rows(name, rows)
    if not mine:
        return "not in the committed parity run"
    passed = sum(bool(r.get("passed")) and r.get("supported", True) for r in mine)
    failed = sum(not r.get("passed") and r.get("supported", True) for r in mine)
    na = sum(not r.get("supported", True) for r in mine)
    return f"{passed} passed, {failed} failed, {na} n/a"


def parity_table(name: str, rows: list[dict]) -> list[str]:
    mine = parity_rows(name, rows)
    if not mine:
        return ["No rows for this model in the committed parity run: `twins parity " + name + "` measures them."]
    backends = [b for b in PARITY_BACKENDS if any(r["backend"] == b for r in mine)]
    checks = list(dict.fromkeys(r["check"] for r in mine))
    out = ["| check | " + " | ".join(PARITY_BACKENDS[b] for b in backends) + " |",
           "|---|" + "--:|" * len(backends)]
    for check in checks:
        cells = []
        for b in backends:
            r = next((r for r in mine if r["backend"] == b and r["check"] == check), None)
            if r is None:
                cells.append("—")
            elif not r.get("supported", True):
                cells.append("n/a")
            else:
                err = "0" if r["error"] == 0 else f"{r['error']:.1e}"
                cells.append(f"{err} {'ok' if r['passed'] else '**FAIL**'} (bound {r['bound']:.0e})")
        out.append(f"| {check} | " + " | ".join(cells) + " |")
    na = [r for r in mine if not r.get("supported", True) and r.get("detail")]
    if na:
        out += ["", "Rows that do not apply, and why:", ""]
        out += [f"- {r['check']} on {r['backend']}: {r['detail']}" for r in na]
    return out


def torch_params(name: str) -> int | None:
    """Parameters of the torch twin at its default head, built on the meta device (no memory, no weights)."""
    try:
        import torch

        import torch_impl

        with torch.device("meta"):
            model = torch_impl.build(name)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 -- the card says it could not count rather than failing the site
        return None


def size_rules(info) -> list[str]:
    out = [f"- default input: {info.input_size} x {info.input_size} pixels, NHWC for Keras and NCHW for torch"]
    low = f"at least {info.min_input_size} x {info.min_input_size}"
    if info.max_input_size:
        low += f", at most {info.max_input_size} x {info.max_input_size}"
    out.append(f"- accepted: {low}")
    if info.size_multiple > 1:
        form = (f"a multiple of {info.size_multiple}" if not info.size_offset
                else f"of the form {info.size_multiple}k + {info.size_offset}")
        why = info.extra.get("size_why")
        out.append(f"- height and width each {form}" + (f" ({why})" if why else ""))
    if info.train_min_input_size:
        out.append(f"- training mode with its auxiliary head: at least {info.train_min_input_size} pixels")
    out.append(f"- parity size: {info.parity_size} x {info.parity_width(info.parity_size)} (height x width, "
               "never square: a twin that confuses height and width is caught)")
    out.append(f"- normalisation: mean {tuple(info.mean)}, std {tuple(info.std)}")
    return out


@functools.cache
def _committed_runs() -> tuple:
    """`(config path, config, history path, history)` of every training run under docs/training/, read once."""
    runs = []
    for config_path in sorted(TRAINING.glob("*.config.json")):
        history_path = config_path.with_name(config_path.name.replace(".config.json", ".history.json"))
        runs.append((config_path, json.loads(config_path.read_text()), history_path,
                     json.loads(history_path.read_text()) if history_path.is_file() else {}))
    return tuple(runs)


@functools.cache
def _committed_benchmarks() -> tuple:
    """`(path relative to the repository, meta, rows)` of every committed benchmark.json, read once."""
    return tuple((Path(path).relative_to(ROOT).as_posix(), data.get("meta", {}), data.get("rows", []))
                 for path in sorted(glob.glob(str(BENCHMARKS / "**" / "benchmark.json"), recursive=True))
                 for data in [json.loads(Path(path).read_text())])


def training_runs(name: str) -> list[str]:
    out = []
    for config_path, config, history_path, history in _committed_runs():
        if config.get("model") != name:
            continue
        best = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in history.items() if k.startswith("best_"))
        side = config["framework"] + (f" (Keras on {config['backend']})" if config.get("backend") else "")
        out.append(f"| [{config_path.name.replace('.config.json', '')}](../training/{history_path.name}) | {side} | "
                   f"{config.get('data')} | {config.get('epochs')} | {config.get('batch_size')} | "
                   f"{config.get('lr')} | {best or '—'} |")
    if not out:
        return []
    return ["| run (history) | framework | data | epochs | batch | lr | best |", "|---|---|---|--:|--:|--:|---|"] + out


def benchmark_rows(name: str) -> list[str]:
    out = []
    for source, meta, rows in _committed_benchmarks():
        for r in rows:
            if r.get("model") != name or r.get("peer_of"):
                continue
            if r.get("status") != "ok":
                figure = f"n/a: {r.get('status')}"
            elif r.get("mode") == "latency":
                figure = f"{r['latency_ms_p50']:.3g} ms p50 (p90 {r['latency_ms_p90']:.3g}, p99 {r['latency_ms_p99']:.3g})"
            else:
                figure = f"{r['samples_per_sec']:.4g} samples/s"
            ratio = r.get("ratio_to_torch")
            out.append(f"| {meta.get('device_name') or r.get('device')} | {r['backend']} | {r['mode']} | {r['dtype']} | "
                       f"{r['batch']} | {r['img_size']} | {figure} | {'—' if ratio is None else f'{ratio:.2f}'} | "
                       f"`{source}` ({str(meta.get('date', ''))[:10]}) |")
    if not out:
        return []
    return ["| device | backend | mode | dtype | batch | img | measured | ratio to torch | source (date) |",
            "|---|---|---|---|--:|--:|---|--:|---|"] + out


def card(name: str, rows: list[dict], meta: dict) -> str:
    from twins import registry

    info = registry.get(name)
    params = torch_params(name)
    guide, guide_title = GUIDES.get(info.family) or GUIDES.get(info.task, GUIDES["classification"])
    summary = (info.notes[:1].upper() + info.notes[1:] + ".") if info.notes else f"A {info.family} model."
    lines = [f"# {name}", "", summary, "",
             "| property | value |", "|---|---|",
             f"| family | {info.family} |",
             f"| task | {info.task} |",
             f"| torch keys | {info.key_source or 'not stated by its registration'} |",
             f"| parameters (torch twin, default head) | {'could not be counted' if params is None else f'{params:,}'} |",
             f"| default classes | {info.num_classes} |",
             f"| head replaced by a new class count | {', '.join(f'`{m}`' for m in info.classifier)} |",
             f"| auxiliary heads | {', '.join(f'`{m}`' for m in info.aux_heads) + f' (weight {info.aux_weight})' if info.aux_heads else 'none'} |",
             f"| side by side | [twins explain {name}](../explain/{name}.html) |",
             f"| training guide | [{guide_title}](../{guide}) |", "",
             "## Input size", ""] + size_rules(info)
    lines += ["", "## Build it", "", "```python",
              "import torch_impl, keras_impl", "",
              f'torch_model = torch_impl.build("{name}")    # nn.Module, NCHW',
              f'keras_model = keras_impl.build("{name}")    # keras.Model, NHWC, on any Keras backend',
              "```", "",
              "## Parity", ""]
    if meta:
        lines += [f"From `docs/parity/all.json`: `{meta['command']}` at {meta['commit']} ({meta['date']}; "
                  + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f"). {meta.get('note', '')}", ""]
    lines += [f"Status: {parity_status(name, rows)}. Each cell is the check's error beside its bound; what each "
              "check compares and why its bound is what it is: [Parity](../parity.md).", ""]
    lines += parity_table(name, rows)
    for vid, v in variants_of(name).items():
        lines += ["", f"### Variant `{vid}`", "", f"{name} built with {v.options}: {v.why}.", ""]
        lines += [f"Status: {parity_status(vid, rows)}.", ""] + parity_table(vid, rows)
    runs = training_runs(name)
    lines += ["", "## Measured training runs", ""]
    lines += (["From `docs/training/` (each run's config and history as `twins train` wrote them):", ""] + runs
              if runs else [f"None committed for this model; the [training guide](../{guide}) shows the recipe."])
    bench = benchmark_rows(name)
    lines += ["", "## Benchmarks", ""]
    lines += (["From the committed results under `benchmarks/results/`:", ""] + bench
              if bench else ["No committed benchmark rows: `python -m benchmarks --models " + name + "` measures them "
                             "(see [Benchmarks](../benchmarks.md))."])
    return "\n".join(lines) + "\n"


def models_index(names: list[str], rows: list[dict]) -> str:
    from twins import registry

    lines = ["# Models", "",
             "A card per registered model, generated from the registry and the committed results when the site is "
             "built: a pair registered from outside this repository ([Port your own model](../port-your-own-model.md))"
             " gets one too.", "",
             "| model | family | task | default input | parity (docs/parity/all.json) |", "|---|---|---|--:|---|"]
    for name in names:
        info = registry.get(name)
        lines.append(f"| [{name}]({name}.md) | {info.family} | {info.task} | {info.input_size} | "
                     f"{parity_status(name, rows)} |")
    return "\n".join(lines) + "\n"


def explain_pages(names: list[str]) -> dict[str, str]:
    """`explain/NAME.html` for every model: from the folder TWINS_DOCS_EXPLAIN names, else made here."""
    given = os.environ.get(EXPLAIN_ENV)
    if given:
        folder = Path(given)
        return {name: (folder / f"{name}.html").read_text() for name in names if (folder / f"{name}.html").is_file()}
    from twins_cli.report import explain_command

    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(explain_command(Path(tmp), PARITY), capture_output=True, text=True, cwd=ROOT)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"twins explain all failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return {name: (Path(tmp) / f"{name}.html").read_text() for name in names if (Path(tmp) / f"{name}.html").is_file()}
