"""The package imports form no ring, and point one way: sim -> runtime -> policy.

Every ``import`` statement counts, at module level or inside a function (a lazy import closes a ring as
surely when it runs); only imports under ``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("policy", "runtime", "sim")
LAYER = {"policy": 0, "runtime": 1, "sim": 2}  # a package may import only packages of a lower or equal layer


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} of every module in ``PACKAGES`` (a package is its ``__init__``)."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{imported module of ours: line} of one module, function-level imports included."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            out.setdefault(target, line)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)  # a submodule, else a name of the module
    return out


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_rings(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each as a closed path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(sorted(g), graph) for g in groups]


def _cycle_in(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One closed path through ``group``'s first module, by breadth-first search inside the group."""
    start, members = group[0], set(group)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if v != start else [start, start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return group


def describe(ring: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(ring, ring[1:])) + f" -> {ring[-1]}"


def test_no_import_rings():
    graph = import_graph()
    rings = find_rings(graph)
    assert not rings, "import rings:\n" + "\n".join(describe(r, graph) for r in rings)


def test_imports_point_one_way():
    graph = import_graph()
    wrong = [f"{a} imports {b} (line {line})" for a, deps in graph.items() for b, line in deps.items()
             if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert not wrong, "sim -> runtime -> policy, never back:\n" + "\n".join(wrong)


def test_no_private_names_imported_across_modules():
    modules = module_files()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)


def test_the_walk_finds_rings_through_function_level_imports(tmp_path):
    """The checker itself: a ring closed only by an import inside a function, and a relative one, are found."""
    pkg = tmp_path / "sim"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from sim.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from sim import c\n    return c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sim import e\n")
    (pkg / "e.py").write_text("import sim.d\n")
    for other in ("policy", "runtime"):
        (tmp_path / other).mkdir()
        (tmp_path / other / "__init__.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["sim.b"] == {"sim.c": 2} and graph["sim.c"] == {"sim.a": 1}
    assert find_rings(graph) == [["sim.a", "sim.b", "sim.c", "sim.a"]]  # d <-> e only under TYPE_CHECKING
