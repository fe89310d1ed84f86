"""The import graph, read with ``ast``: lens/ stands alone, and neither package imports in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import lens

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _typing_only(tree: ast.AST) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: annotations only, never run, so never part of a circle."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import that runs, at any depth (imports inside functions count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _typing_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``from ui import x`` names ui.x)."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for module, names in imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in files and target != name and target != package:
                    edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), as the modules in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_circle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_under_type_checking_are_left_out(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\ndef f():\n    import b\n")
    assert imports(source) == [("typing", ["TYPE_CHECKING"]), ("b", [])]


def test_lens_never_imports_the_app():
    for path in (ROOT / "lens").rglob("*.py"):
        for module, _ in imports(path):
            top = module.split(".")[0]
            assert top not in ("ui", "pages", "streamlit", "app"), f"{path.relative_to(ROOT)} imports {module}"


def test_no_import_cycles_in_ui():
    assert cycles(graph("ui")) == []


def test_no_import_cycles_in_lens():
    assert cycles(graph("lens")) == []


def test_pages_use_only_the_public_lens_api():
    """Pages import ``lens`` or names in lens.__all__, never a module past lens/__init__."""
    for path in (ROOT / "pages").glob("*.py"):
        for module, names in imports(path):
            if module.split(".")[0] != "lens":
                continue
            where = path.relative_to(ROOT)
            assert module == "lens", f"{where} reaches past lens/__init__ to {module}"
            assert set(names) <= set(lens.__all__), f"{where} imports {set(names) - set(lens.__all__)}"
