"""Relative-path validation as proxy, node, limiter and CLI all apply it."""

from __future__ import annotations

import pytest

from gitquorum.errors import InvalidArgument
from gitquorum.wire.paths import (
    INTERNAL_DIR,
    names_internal_dir,
    validate_relative,
    validate_repository_path,
)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.git", "a.git"),
        ("group/project.git", "group/project.git"),
        ("./a/./b/", "a/b"),
        ("a//b", "a/b"),
        ("@hashed/ab/cd/x.git", "@hashed/ab/cd/x.git"),
        (f"x/{INTERNAL_DIR}", f"x/{INTERNAL_DIR}"),  # only the first component is private
        ("+gitquorumx/a", "+gitquorumx/a"),
    ],
)
def test_valid_repository_paths(relative: str, expected: str) -> None:
    assert validate_repository_path(relative) == expected


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("", "repository path not set"),
        ("./", "repository path not set"),
        ("/abs/a.git", "repository path is absolute: relative path escapes root directory"),
        ("a/../b", "repository path contains '..': relative path escapes root directory"),
        ("..", "repository path contains '..': relative path escapes root directory"),
        ("a\x00b", "repository path contains a NUL byte"),
        (INTERNAL_DIR, "relative path names the storage's internal directory"),
        (f"{INTERNAL_DIR}/tmp/x", "relative path names the storage's internal directory"),
        (f"./{INTERNAL_DIR}/x", "relative path names the storage's internal directory"),
    ],
)
def test_refused_repository_paths(relative: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_repository_path(relative)
    assert exc.value.message == message


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("repository path", "repository path not set"),
        ("relative path", "relative path not set"),
    ],
)
def test_the_caller_names_the_path(what: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_repository_path("", what)
    assert exc.value.message == message


def test_validate_relative_allows_the_internal_directory() -> None:
    # Object directories and scratch paths are not repositories: no private-area rule.
    assert validate_relative(f"{INTERNAL_DIR}/tmp") == f"{INTERNAL_DIR}/tmp"
    with pytest.raises(InvalidArgument, match="object directory contains"):
        validate_relative("../x", "object directory")


@pytest.mark.parametrize(
    ("relative", "internal"),
    [
        (INTERNAL_DIR, True),
        (f"{INTERNAL_DIR}/tmp", True),
        ("a", False),
        (f"a/{INTERNAL_DIR}", False),
        (f"{INTERNAL_DIR}x", False),
    ],
)
def test_names_internal_dir(relative: str, internal: bool) -> None:
    assert names_internal_dir(relative) is internal
