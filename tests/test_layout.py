"""The package's layout: no module of ``src/deepcloak`` imports, however indirectly, itself.

Every import counts, wherever it is written: at the top, inside a function, under
``if TYPE_CHECKING:``. An import deferred into a function to break a circle still ties the two
modules together (each needs the other to work), so it is a circle here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "deepcloak"


def _modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The package's modules that ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from package import submodule` imports the submodule; `from m import name`, m.
                sub = f"{base}.{alias.name}"
                if sub in known:
                    yield sub
                elif base in known:
                    yield base


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Each module of the package and the package's modules it imports (itself left out)."""
    known = _modules(src)
    return {m: {t for t in _imported(m, p, known) if t != m} for m, p in known.items()}


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: one per tangle (:func:`tangles`), as a path
    ``a -> b -> ... -> a`` through it."""
    return [_cycle_through(c, graph) for c in tangles(graph)]


def tangles(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of two or more modules (Tarjan's algorithm): each
    module of one reaches every other through imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_through(component: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """One closed path inside ``component``, from its first module (by name) back to it."""
    start = min(component)
    # Breadth-first from start's successors back to start: the shortest circle through it.
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no circle in {sorted(component)}")  # a component always has one


def test_no_import_circles() -> None:
    graph = import_graph()
    found = []
    for tangle in tangles(graph):
        path = " -> ".join(_cycle_through(tangle, graph))
        found.append(f"{path} (tied together: {', '.join(sorted(tangle))})")
    assert not found, "import circles between modules of src/deepcloak:\n" + "\n".join(found)


def test_circles_are_found_and_named(tmp_path: Path) -> None:
    # A circle through a deferred import and one through a relative import are both found.
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from deepcloak.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from deepcloak import a\n")
    (pkg / "c.py").write_text("import deepcloak.a\n")  # into the circle, not part of it
    (pkg / "sub" / "__init__.py").write_text("from .x import y\n")
    (pkg / "sub" / "x.py").write_text("from deepcloak import sub\ny = 1\n")
    graph = import_graph(tmp_path)
    assert graph["deepcloak.c"] == {"deepcloak.a"}
    assert graph["deepcloak.sub"] == {"deepcloak.sub.x"}
    assert sorted(circles(graph)) == [
        ["deepcloak.a", "deepcloak.b", "deepcloak.a"],
        ["deepcloak.sub", "deepcloak.sub.x", "deepcloak.sub"],
    ]


@pytest.mark.parametrize("edges", [{"m": {"n"}, "n": set()}, {"m": set()}])
def test_no_circle_no_report(edges: dict[str, set[str]]) -> None:
    assert circles(edges) == []
