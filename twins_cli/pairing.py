"""Which definition of a Keras twin file mirrors which of its torch twin, read from the code (`twins explain`).

A file is cut into units: its header (docstring and imports), module-level names, functions and classes. A
pair is made, in this order, by
1. a docstring naming the other side: "Twin of torch_impl.resnet.BasicBlock", "Twin of `ResNet._make_layer`"
   (a module prefix, backticks and a trailing "()" are ignored);
2. the naming rule: the same name (`resnet50`, `_resnet`, `ARCH`), a torch class's name in snake case
   (`BasicBlock` -> `basic_block`), or a torch method's name without its leading underscores
   (`ResNet._make_layer` -> `make_layer`) where only one method of the file has it.
A torch class that pairs as a whole is one unit; one that does not is cut into its header and its methods,
which pair one by one. What pairs with nothing is a unit without a twin, and a docstring that names a twin the
other file lacks is reported: the page doubles as a check that the files still mirror each other.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

TWIN_OF = re.compile(r"[Tt]win of\s+`?([A-Za-z_][\w./]*)")


@dataclass
class Unit:
    """One definition (or the file's header), with the lines it spans (1-based, inclusive)."""

    name: str  # "BasicBlock", "ResNet._make_layer", "ResNet (class)", "(header)"
    kind: str  # "header", "assignment", "function", "class", "class header", "method"
    start: int
    end: int
    source: str
    twin_ref: str | None = None  # the name a "Twin of ..." docstring gives, normalised
    methods: list["Unit"] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass
class Row:
    keras: Unit | None
    torch: Unit | None
    how: str  # "docstring", "name", or "" for a unit without a twin
    problem: str = ""  # a docstring naming a twin the other file lacks


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _normalise(ref: str) -> str:
    ref = ref.strip("`.,;:()").removesuffix("()")
    if ref.endswith(".py"):
        return "(header)"
    for prefix in ("torch_impl.", "keras_impl."):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            ref = ref.split(".", 1)[1] if "." in ref else "(header)"
    return ref


def twin_ref(docstring: str | None) -> str | None:
    """The name after "Twin of" in a docstring; in "Twin of the size part of `Inception3._check_input`", the
    first quoted name of that sentence."""
    text = docstring or ""
    match = TWIN_OF.search(text)
    if not match:
        return None
    ref = match.group(1)
    if re.fullmatch(r"[a-z]+", ref) and text[match.start(1) - 1] != "`":  # an English word: look further
        sentence = re.split(r"\.\s", text[match.end(1):], maxsplit=1)[0]
        quoted = re.search(r"`([A-Za-z_][\w.]*)`", sentence)
        if not quoted:
            return None
        ref = quoted.group(1)
    return _normalise(ref)


def _span(node, lines: list[str]) -> tuple[int, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].lstrip().startswith("#"):  # the comments just above belong to it
        start -= 1
    return start, node.end_lineno


def units(path: str | Path) -> list[Unit]:
    """The units of a Python file in file order: the header, then each top-level definition (a class with its
    methods as `methods`, for pairing them one by one)."""
    text = Path(path).read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    out: list[Unit] = []
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))]
    first = _span(body[0], lines)[0] if body else len(lines) + 1
    header_end = first - 1
    while header_end > 0 and not lines[header_end - 1].strip():
        header_end -= 1
    out.append(Unit("(header)", "header", 1, header_end, "\n".join(lines[:header_end]), twin_ref(ast.get_docstring(tree))))

    def source(start, end):
        return "\n".join(lines[start - 1:end])

    for node in body:
        start, end = _span(node, lines)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if not names:
                continue
            out.append(Unit(names[0], "assignment", start, end, source(start, end)))
            continue
        unit = Unit(node.name, "class" if isinstance(node, ast.ClassDef) else "function", start, end,
                    source(start, end), twin_ref(ast.get_docstring(node)))
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            for m in methods:
                m_start, m_end = _span(m, lines)
                unit.methods.append(Unit(f"{node.name}.{m.name}", "method", m_start, m_end, source(m_start, m_end),
                                         twin_ref(ast.get_docstring(m))))
        out.append(unit)
    return out


def _split_class(unit: Unit) -> list[Unit]:
    """A class that does not pair as a whole: its header (the lines before its first method), then its methods."""
    if not unit.methods:
        return [unit]
    header_end = unit.methods[0].start - 1
    lines = unit.source.splitlines()[:header_end - unit.start + 1]
    while lines and not lines[-1].strip():
        lines.pop()
    header = Unit(f"{unit.name} (class)", "class header", unit.start, unit.start + len(lines) - 1, "\n".join(lines),
                  unit.twin_ref)
    return [header, *unit.methods]


def pair(keras_units: list[Unit], torch_units: list[Unit]) -> list[Row]:
    """Rows in torch file order, each Keras unit beside its twin; Keras units without one are placed after the
    row of the Keras unit before them."""
    torch_whole = {u.name: u for u in torch_units}
    method_names = [m.name for u in torch_units for m in u.methods]
    torch_methods = {m.name: m for u in torch_units for m in u.methods}
    by_short = {}
    for name in method_names:
        by_short.setdefault(name.rsplit(".", 1)[1].lstrip("_"), []).append(name)
    keras_by_name = {u.name: u for u in keras_units}

    matches: dict[str, tuple[str, str]] = {}  # keras name -> (torch name, how)
    problems: dict[str, str] = {}
    taken: set[str] = set()

    def claim(keras_name: str, torch_name: str, how: str) -> None:
        matches[keras_name] = (torch_name, how)
        taken.add(torch_name)

    for k in keras_units:  # docstrings first: they outrank the naming rule
        if k.kind == "header":
            claim(k.name, "(header)", "docstring" if k.twin_ref == "(header)" else "name")
            continue
        ref = k.twin_ref
        if ref is None:
            continue
        target = ref if ref in torch_whole or ref in torch_methods else None
        if target is None and "." not in ref:  # "Twin of _make_layer": a method named so in one class
            candidates = [n for n in method_names if n.rsplit(".", 1)[1] == ref]
            target = candidates[0] if len(candidates) == 1 else None
        if target is None:
            problems[k.name] = f"its docstring names {ref}, which the torch file does not define"
        elif target in taken:
            other = next(name for name, (t, _) in matches.items() if t == target)
            problems[k.name] = f"its docstring names {ref}, which {other} already mirrors"
        else:
            claim(k.name, target, "docstring")
    torch_problems: dict[str, str] = {}
    for t in [*torch_units, *(m for u in torch_units for m in u.methods)]:  # a torch docstring naming its twin
        if t.twin_ref is None or t.kind == "header":
            continue
        if t.twin_ref not in keras_by_name:
            torch_problems[t.name] = f"its docstring names {t.twin_ref}, which the Keras file does not define"
        elif t.twin_ref not in matches and t.name not in taken:
            claim(t.twin_ref, t.name, "docstring")
    for k in keras_units:
        if k.name in matches:
            continue
        candidates = [t.name for t in torch_units if t.kind != "header" and k.name in (t.name, snake(t.name))]
        if not candidates and len(by_short.get(k.name, [])) == 1:
            candidates = by_short[k.name]
        candidates = [c for c in candidates if c not in taken]
        if candidates:
            claim(k.name, candidates[0], "name")

    paired_torch = {name for name, _ in matches.values()}
    torch_rows: list[Unit] = []
    for t in torch_units:
        split = t.kind == "class" and t.name not in paired_torch and any(m.name in paired_torch for m in t.methods)
        torch_rows += _split_class(t) if split else [t]
    keras_of = {name: keras_by_name[k] for k, (name, _) in matches.items()}
    how_of = {name: how for _, (name, how) in matches.items()}
    rows = [Row(keras_of.get(t.name), t, how_of.get(t.name, ""),
                "; ".join(filter(None, [problems.get(keras_of[t.name].name, "") if t.name in keras_of else "",
                                        torch_problems.get(t.name, "")])))
            for t in torch_rows]
    # Keras units without a twin, after the row of the Keras unit before them in the Keras file.
    placed = {r.keras.name for r in rows if r.keras is not None}
    for i, k in enumerate(keras_units):
        if k.name in placed:
            continue
        before = next((keras_units[j].name for j in range(i - 1, -1, -1) if keras_units[j].name in placed), None)
        at = next((n + 1 for n, r in enumerate(rows) if r.keras is not None and r.keras.name == before), 0)
        rows.insert(at, Row(k, None, "", problems.get(k.name, "")))
        placed.add(k.name)
    return rows


def pair_files(keras_path: str | Path, torch_path: str | Path) -> list[Row]:
    return pair(units(keras_path), units(torch_path))
