"""The documentation site (`make docs`) and the README that points into it: the site builds strict (a broken link
or a missing page fails the build: shown failing on a page with a broken link), reads offline (no script, style
sheet or font from the network), has a generated card for every registered model, and its home page, a model card
and the API reference render in headless Chromium with no console message and their headings. The README stays
a short page. The tensorflow pass only: the build is framework-free apart from counting parameters on torch's
meta device; the `twins explain` pages come from the session's `explained` fixture."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.browser import problems, render
from parity_tests.conftest import BACKEND
from twins import registry

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="framework-free: the tensorflow pass only")


def mkdocs_build(config: Path, site: Path, explain: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWINS_DOCS_EXPLAIN": str(explain), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def site(explained, tmp_path_factory):
    if not (ROOT / ".cache" / "docs" / "iframe-worker-shim.js").is_file():
        pytest.fail("the offline search's shim is missing: `make test` and `make docs` fetch it (.cache/docs)")
    out = tmp_path_factory.mktemp("site")
    done = mkdocs_build(ROOT / "mkdocs.yml", out, explained[0])
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out


def test_every_registered_model_has_a_generated_card(site):
    names = registry.names()
    assert "mobilenet_v2" in names  # the example package, registered from outside through its entry point
    index = (site / "models" / "index.html").read_text()
    for name in names:
        page = (site / "models" / f"{name}.html").read_text()
        assert f"<h1 id=\"{name}\">{name}" in page or f">{name}</h1>" in page, name
        assert f"../explain/{name}.html" in page and (site / "explain" / f"{name}.html").is_file(), name
        assert f"{name}.html" in index
        key_source = registry.get(name).key_source
        assert key_source and key_source.split(" (")[0].replace("`", "") in html.unescape(re.sub("<[^>]+>", "", page))
    # the parity rows on a card are the committed run's: resnet18's eval row on tensorflow, as all.json has it
    row = next(r for r in json.loads((ROOT / "docs/parity/all.json").read_text())
               if r["model"] == "resnet18" and r["backend"] == "tensorflow" and r["check"] == "eval_output")
    assert f"{row['error']:.1e} ok" in (site / "models" / "resnet18.html").read_text()


def test_the_site_reads_offline(site):
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
    pages = list(site.rglob("*.html"))
    assert len(pages) > 30
    for page in pages:
        found = [m.group(0) for m in remote.finditer(page.read_text()) if 'rel="canonical"' not in m.group(0)]
        assert not found, (page, found)
    assert (site / "assets/javascripts/iframe-worker-shim.js").is_file()


@pytest.mark.parametrize("page, heading", [("index.html", "What this is for"),
                                           ("models/resnet50.html", "Parity"),
                                           ("api/keras_impl.html", "keras_impl.layers")])
def test_pages_render_in_chromium(site, page, heading, tmp_path):
    result = render(site / page, tmp_path / "page.png")
    assert problems(result, heading) == []
    # the same check on a heading the page does not have says so
    assert problems(result, "A heading no page has") == ["the rendered DOM lacks 'A heading no page has'"]


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    """The site's own strictness (mkdocs.yml's `strict` and `validation`) on a two-page site: a link to a page that
    does not exist, and one to a heading that does not exist, each fail the build; the same pages without them
    build."""
    import yaml

    ours = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump({"site_name": "t", "docs_dir": str(docs), "strict": ours["strict"],
                                      "validation": ours["validation"], "theme": {"name": "mkdocs"},
                                      "nav": ["index.md", "other.md"]}))
    for link, bad in [("other.md#a-heading", None), ("no-such-page.md", "no-such-page.md"),
                      ("other.md#no-such-heading", "no-such-heading")]:
        (docs / "index.md").write_text(f"# Home\n\nSee [there]({link}).\n")
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-f", str(config), "--site-dir",
                               str(tmp_path / "site")], capture_output=True, text=True, env={**os.environ,
                               "NO_MKDOCS_2_WARNING": "1"}, timeout=120)
        if bad is None:
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            assert done.returncode != 0 and bad in done.stderr, (link, done.stderr[-3000:])


def test_the_readme_is_short_and_lists_every_model():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text and "make docs" in text
    table = [line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| ")]
    for name in registry.names():
        assert name in table, f"the README's model table lacks {name}"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"
