"""Relative-path validation, the same on the proxy, the node, the limiter and the CLI.

A path a client names is checked before anything touches disk or routes by it:
no absolute paths, no ``..`` components, no NUL bytes, nothing empty, and a
repository never inside a storage's private directory. The proxy refuses
exactly what a node refuses, so a client gets the same answer either way.
"""

from __future__ import annotations

import functools
import os

from gitquorum.errors import InvalidArgument

# Private per-storage area (temporary directories, removed repositories).
INTERNAL_DIR = "+gitquorum"


def validate_relative(relative: str, what: str = "relative path") -> str:
    """The path normalized (no empty or ``.`` parts); refuses anything that could leave a root."""
    if "\x00" in relative:
        raise InvalidArgument(f"{what} contains a NUL byte")
    if relative.startswith("/") or os.path.isabs(relative):
        raise InvalidArgument(f"{what} is absolute: relative path escapes root directory")
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidArgument(f"{what} contains '..': relative path escapes root directory")
    if not parts:
        raise InvalidArgument(f"{what} not set")
    return "/".join(parts)


@functools.lru_cache(maxsize=4096)
def validate_repository_path(relative: str, what: str = "repository path") -> str:
    """A repository's relative path, normalized; also refuses the storage's internal directory.

    Pure, and asked on every call: the answers for busy repositories are kept
    (a refusal raises, and is never kept).
    """
    cleaned = validate_relative(relative, what)
    if names_internal_dir(cleaned):
        raise InvalidArgument("relative path names the storage's internal directory")
    return cleaned


def names_internal_dir(relative: str) -> bool:
    """True when a normalized relative path lies in (or is) the internal directory."""
    return relative.split("/")[0] == INTERNAL_DIR
