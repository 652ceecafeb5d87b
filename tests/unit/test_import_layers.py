"""The package's layers, read from the source: who may import whom, and no cycles.

Every import counts, at module level and inside functions alike: a deferred
import hides a dependency from a reader, not from the layering. Only imports
of ``gitquorum`` modules are collected.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import gitquorum

ROOT = Path(gitquorum.__file__).parent
PACKAGE = "gitquorum"

# (importer prefix, forbidden imported prefixes): the dependency rules of DESIGN.md.
FORBIDDEN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gitquorum.storage", ("gitquorum.proxy",)),
    ("gitquorum.proxy", ("gitquorum.storage",)),
    ("gitquorum.gateway", ("gitquorum.proxy", "gitquorum.storage")),
    (
        "gitquorum.wire",
        (
            "gitquorum.proxy",
            "gitquorum.storage",
            "gitquorum.gateway",
            "gitquorum.cluster",
            "gitquorum.cli",
        ),
    ),
)


def module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(
    tree: ast.AST, name: str, package: bool, known: Iterable[str], prefix: str = PACKAGE
) -> set[str]:
    """Every project module one module imports, resolved to a module of ``known``.

    ``from pkg import mod`` counts as an import of ``pkg.mod`` when ``mod`` is a
    module, else of ``pkg``; relative imports are resolved against ``name``.
    """
    modules = set(known)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    resolved: set[str] = set()
    for imported in found:
        if imported != prefix and not imported.startswith(prefix + "."):
            continue
        # "import a.b.c" of a name that is not itself a module: its nearest module.
        while imported not in modules and "." in imported:
            imported = imported.rsplit(".", 1)[0]
        if imported in modules and imported != name:
            resolved.add(imported)
    return resolved


def module_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    return {
        name: imports_of(
            ast.parse(path.read_text(), str(path)), name, is_package(path), files, package
        )
        for name, path in files.items()
    }


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    found = []
    for importer, imported in sorted(graph.items()):
        for rule, forbidden in FORBIDDEN:
            if not _under(importer, rule):
                continue
            for target in sorted(imported):
                if any(_under(target, f) for f in forbidden):
                    found.append(f"{importer} imports {target}")
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                successor = pending.pop(0)
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, sorted(graph.get(successor, ()))))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# -- the checker itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "name", "package", "expected"),
    [
        ("import gitquorum.proxy.handler", "gitquorum.x", False, {"gitquorum.proxy.handler"}),
        ("from gitquorum.proxy import handler", "gitquorum.x", False, {"gitquorum.proxy.handler"}),
        (
            "from gitquorum.proxy.handler import f",
            "gitquorum.x",
            False,
            {"gitquorum.proxy.handler"},
        ),
        ("from gitquorum import log", "gitquorum.x", False, {"gitquorum.log"}),
        ("from gitquorum.proxy import NAME", "gitquorum.x", False, {"gitquorum.proxy"}),
        (
            "def f():\n    from gitquorum.storage import git",
            "gitquorum.x",
            False,
            {"gitquorum.storage.git"},
        ),
        (
            "class C:\n    def m(self):\n        import gitquorum.log",
            "gitquorum.x",
            False,
            {"gitquorum.log"},
        ),
        ("from . import handler", "gitquorum.proxy.fanout", False, {"gitquorum.proxy.handler"}),
        ("from .. import log", "gitquorum.proxy.fanout", False, {"gitquorum.log"}),
        ("from . import handler", "gitquorum.proxy", True, {"gitquorum.proxy.handler"}),
        ("import grpc\nfrom os import path", "gitquorum.x", False, set()),
        ("from gitquorum.x import y", "gitquorum.x", False, set()),
    ],
)
def test_imports_of(source: str, name: str, package: bool, expected: set[str]) -> None:
    known = {
        "gitquorum",
        "gitquorum.x",
        "gitquorum.log",
        "gitquorum.proxy",
        "gitquorum.proxy.handler",
        "gitquorum.proxy.fanout",
        "gitquorum.storage",
        "gitquorum.storage.git",
    }
    assert imports_of(ast.parse(source), name, package, known) == expected


@pytest.mark.parametrize(
    ("importer", "imported", "forbidden"),
    [
        ("gitquorum.storage.a", "gitquorum.proxy.b", True),
        ("gitquorum.storage", "gitquorum.proxy", True),
        ("gitquorum.proxy.b", "gitquorum.storage", True),
        ("gitquorum.proxy.b", "gitquorum.storage.a", True),
        ("gitquorum.gateway.h", "gitquorum.proxy.b", True),
        ("gitquorum.gateway.h", "gitquorum.storage.a", True),
        ("gitquorum.wire.r", "gitquorum.proxy.b", True),
        ("gitquorum.wire.r", "gitquorum.storage.a", True),
        ("gitquorum.wire.r", "gitquorum.gateway.h", True),
        ("gitquorum.wire.r", "gitquorum.cluster.k", True),
        ("gitquorum.wire", "gitquorum.cli", True),
        ("gitquorum.proxy.b", "gitquorum.wire.r", False),
        ("gitquorum.proxy.b", "gitquorum.cluster.k", False),
        ("gitquorum.storage.a", "gitquorum.wire.r", False),
        ("gitquorum.gateway.h", "gitquorum.wire.r", False),
        ("gitquorum.cli.x", "gitquorum.proxy.b", False),
        ("gitquorum.cli.x", "gitquorum.storage.a", False),
        ("gitquorum.wire.r", "gitquorum.errors", False),
        ("gitquorum.storagex", "gitquorum.proxy", False),
        ("gitquorum.storage.a", "gitquorum.proxyx", False),
    ],
)
def test_violations(importer: str, imported: str, forbidden: bool) -> None:
    expected = [f"{importer} imports {imported}"] if forbidden else []
    assert violations({importer: {imported}}) == expected


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
        ({"a": {"a"}}, []),
    ],
)
def test_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert sorted(cycles(graph)) == expected


# -- the source tree -----------------------------------------------------------------


def test_the_graph_sees_the_package() -> None:
    graph = module_graph()
    assert "gitquorum.wire.registry" in graph
    assert "gitquorum.wire.registry" in graph["gitquorum.proxy.handler"]


def test_layers_are_respected() -> None:
    assert violations(module_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(module_graph()) == []
