"""Benchmarks start clusters with the package's launcher, never with the test suite's code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def imported_modules(source: str) -> set[str]:
    """Every module a Python source imports, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def imports_tests(source: str) -> bool:
    return any(name == "tests" or name.startswith("tests.") for name in imported_modules(source))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import tests.harness.cluster\n", True),
        ("from tests.harness import gitrepo\n", True),
        ("from tests import conftest\n", True),
        ("def f():\n    from tests.harness.cluster import Cluster\n", True),
        ("import tests\n", True),
        ("from gitquorum.localcluster import LocalCluster\n", False),
        ("import testsuite\n", False),
        ("from . import tests\n", False),
    ],
)
def test_the_check_finds_imports_of_tests(source: str, expected: bool) -> None:
    assert imports_tests(source) is expected


def test_no_benchmark_imports_tests() -> None:
    sources = sorted((ROOT / "bench").rglob("*.py"))
    assert sources, "no benchmark found"
    offenders = [str(p.relative_to(ROOT)) for p in sources if imports_tests(p.read_text())]
    assert offenders == []
