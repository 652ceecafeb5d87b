"""Where each option of a YAML file is: problems name the file and the line.

Problems carry dotted paths (``virtual_storages.0.nodes.1.address: required``).
:func:`yaml_lines` maps each path present in the text to its line; :func:`located`
prefixes every problem with ``FILE:LINE:`` (the line of the option, or of the
nearest enclosing one present when the option itself is missing).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

# Deeper nesting than any configuration has; beyond it, lines are not recorded.
_MAX_DEPTH = 32


def yaml_lines(text: str) -> dict[str, int]:
    """dotted path -> 1-based line, for every key and list item of the first document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    path = f"{prefix}{key.value}"
                    lines.setdefault(path, key.start_mark.line + 1)
                    walk(value, f"{path}.", depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                path = f"{prefix}{index}"
                lines.setdefault(path, item.start_mark.line + 1)
                walk(item, f"{path}.", depth + 1)

    if root is not None:
        walk(root, "", 0)
    return lines


def line_of(lines: dict[str, int], dotted: str) -> int | None:
    """The line of ``dotted``, or of its nearest enclosing option present in the file."""
    parts = dotted.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line is not None:
            return line
        parts.pop()
    return None


def located(path: str | Path, lines: dict[str, int], problems: Iterable[str]) -> list[str]:
    """``FILE:LINE: dotted.path: message`` (``FILE: ...`` when no line is known)."""
    result = []
    for problem in problems:
        dotted, sep, _message = problem.partition(": ")
        line = line_of(lines, dotted) if sep else None
        result.append(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")
    return result
