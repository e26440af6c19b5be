"""The project's import graph, read from the source with ``ast`` (nothing is imported), and its rules.

Used by tests/test_layers.py. Every import counts, also the lazy ones inside
functions: a lazy upward import is still an upward dependency. The imports of a
file are read by the same function that decides what a registered model ships
(``components.registry.model_code.imports_in``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.registry.model_code import imports_in

PACKAGES = ("components", "serving", "pipelines")
#: Package layers, bottom first: a package may import only packages before it.
PACKAGE_ORDER = {"components": 0, "serving": 1, "pipelines": 2}
#: Third-party packages a project package must not import (KFP is the pipelines' business).
FORBIDDEN_THIRD_PARTY = {"components": ("kfp",), "serving": ("kfp",)}
#: Rooms inside components/, by layer: a room may import its own modules and rooms of lower layers.
#: The package's own top-level modules (errors, names, __init__) are the floor everybody stands on.
ROOM_LAYERS: Mapping[str, int] = {
    "": 0,
    "storage": 1,
    "html_report": 1,
    "features": 2,
    "models": 3,
    "data": 4,
    "evaluation": 4,
    "monitoring": 4,
    "canary": 4,
    "retraining": 4,
    "registry": 5,
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def project_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file under the project packages."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_edges(root: Path) -> list[Edge]:
    """Every import of a project module by a project module, plus every import of a third-party top name."""
    modules = project_modules(root)
    edges: set[Edge] = set()
    for importer, path in modules.items():
        for name, line in imports_in(path):
            top = name.split(".")[0]
            if top not in PACKAGE_ORDER:
                edges.add(Edge(importer, top, line))
                continue
            # `from a.b import c` names a module a.b.c when it exists, else the symbol c of a.b.
            if name in modules and name != importer:
                edges.add(Edge(importer, name, line))
    return sorted(edges, key=lambda e: (e.importer, e.line, e.imported))


def _room(path: Path, root: Path) -> str:
    """The sub-package of components/ a file is in; "" for the package's own top-level modules."""
    parts = path.relative_to(root / "components").parts
    return parts[0] if len(parts) > 1 else ""


def layer_violations(root: Path) -> list[str]:
    """Imports that go up or sideways: between packages, between rooms, or to a forbidden library."""
    modules = project_modules(root)
    problems: list[str] = []
    for edge in import_edges(root):
        importer_package = edge.importer.split(".")[0]
        imported_package = edge.imported.split(".")[0]
        if imported_package not in PACKAGE_ORDER:
            if imported_package in FORBIDDEN_THIRD_PARTY.get(importer_package, ()):
                problems.append(f"{edge}: {importer_package} must not import {imported_package}")
            continue
        if PACKAGE_ORDER[imported_package] > PACKAGE_ORDER[importer_package]:
            problems.append(f"{edge}: {importer_package} is below {imported_package}")
            continue
        if importer_package == imported_package == "components":
            here, there = _room(modules[edge.importer], root), _room(modules[edge.imported], root)
            if here not in ROOM_LAYERS or there not in ROOM_LAYERS:
                unknown = here if here not in ROOM_LAYERS else there
                problems.append(f"{edge}: room {unknown!r} has no layer in ROOM_LAYERS")
            elif here != there and ROOM_LAYERS[there] >= ROOM_LAYERS[here]:
                problems.append(
                    f"{edge}: room {here or 'components'} (layer {ROOM_LAYERS[here]}) may not import "
                    f"room {there} (layer {ROOM_LAYERS[there]})"
                )
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of project modules (each a cycle of imports), Tarjan's algorithm."""
    graph: dict[str, set[str]] = {name: set() for name in project_modules(root)}
    for edge in import_edges(root):
        if edge.imported in graph:
            graph[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles
