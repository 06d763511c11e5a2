"""The layering of the repository, read from the source: `twins` (framework-free core) <- `keras_impl`,
`torch_impl` (one framework each) <- `twins_cli`, `benchmarks` (orchestration). Imports only point
down, and no two modules import each other, directly or round a longer circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("twins", "keras_impl", "torch_impl", "twins_cli", "benchmarks")
FRAMEWORKS = {"torch", "keras", "tensorflow", "jax", "jaxlib"}
FORBIDDEN = {
    "twins": FRAMEWORKS | {"keras_impl", "torch_impl", "twins_cli", "benchmarks"},
    "keras_impl": {"torch", "torch_impl", "twins_cli", "benchmarks"},
    "torch_impl": {"keras", "tensorflow", "jax", "keras_impl", "twins_cli", "benchmarks"},
}
# The lazy framework imports the core may make: a .pth file is a torch pickle, and only tensorflow reads
# a TensorFlow checkpoint; a `.pt2` program is torch's to run and a SavedModel tensorflow's (twins.exports opens
# each artifact in its runtime). On Keras' torch backend an unseeded dropout draws from torch's global generator,
# whose state a Keras resume point keeps (keras_impl/train.py, only when that backend is the one running).
ALLOWED = {("twins/checkpoints.py", "torch"), ("twins/tf_checkpoint.py", "tensorflow"), ("twins/exports.py", "torch"),
           ("twins/exports.py", "tensorflow"), ("keras_impl/train.py", "torch")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth (a function-level import counts too)."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule; the package itself only for a name it defines.
            subs = [f"{base}.{alias.name}" for alias in node.names]
            found += [sub for sub in subs if is_module(sub)]
            if not all(is_module(sub) for sub in subs):
                found.append(base)
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources():
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for name in imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package] and (rel, top) not in ALLOWED:
                wrong.append(f"{rel} imports {name}")
    assert not wrong


def test_no_import_cycles_between_modules():
    modules = {module_name(p): p for p in sources()}
    graph = {m: {n for n in imports(p) if n in modules and n != m} for m, p in modules.items()}
    cycles = []

    def visit(node, stack):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles


def test_the_cycle_finder_sees_a_cycle(tmp_path, monkeypatch):
    """The check above, shown red once: two modules that import each other."""
    pkg = tmp_path / "twins_cli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from twins_cli import b\n")
    (pkg / "b.py").write_text("def f():\n    from twins_cli.a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("twins_cli",))
    with pytest.raises(AssertionError, match=r"twins_cli.a -> twins_cli.b -> twins_cli.a"):
        test_no_import_cycles_between_modules()


def test_importing_the_core_imports_no_framework():
    script = (
        "import sys, twins, twins.registry, twins.checkpoints\n"
        f"loaded = sorted(set({sorted(FRAMEWORKS)!r}) & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """`test_imports_only_point_down`, shown red once: the old layout, the parity engine in the core."""
    core = tmp_path / "twins"
    core.mkdir()
    (core / "parity.py").write_text("import numpy\n\ndef run():\n    import keras_impl\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"twins/parity.py imports keras_impl"):
        test_imports_only_point_down("twins")
