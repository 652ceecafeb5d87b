"""Path validation never lets a client path reach outside a storage root.

The node's ``StorageLocator`` (with symlinks on disk pointing out of the root,
at the root itself and into the internal directory), the proxy's
``validate_repository_path`` and the HTTP gateway's URL path parser, over traversal
attempts: ``..``, absolute paths, percent-encoding (single and double),
overlong UTF-8, Unicode look-alikes of '.' and '/', NUL and control bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitquorum.errors import GitquorumError, InvalidArgument
from gitquorum.gateway import paths
from gitquorum.gitaly import shared_pb2
from gitquorum.storage.locator import StorageLocator
from gitquorum.wire.paths import INTERNAL_DIR, validate_relative, validate_repository_path
from tests.fuzz.strategies import TRAVERSALS, relative_paths, url_paths

SETTINGS = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A storage root whose symlinks lead out of it, to it and into its internal directory."""
    base = tmp_path_factory.mktemp("paths")
    root = base / "storage"
    (root / INTERNAL_DIR / "tmp").mkdir(parents=True)
    (base / "outside").mkdir()
    (root / "group").mkdir()
    (root / "link").symlink_to(base / "outside")
    (root / "relative-link").symlink_to("../outside")
    (root / "absolute").symlink_to("/etc")
    (root / "self").symlink_to(".")
    (root / "group" / "up").symlink_to("..")
    (root / "internal").symlink_to(INTERNAL_DIR)
    yield root


def _strictly_inside(root: Path, path: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real != real_root and real.startswith(real_root + os.sep)


@SETTINGS
@given(relative=relative_paths)
def test_validate_relative_yields_only_normalized_relative_paths(relative: str) -> None:
    try:
        cleaned = validate_relative(relative)
    except InvalidArgument as exc:
        assert "path" in exc.message
        return
    parts = cleaned.split("/")
    assert not cleaned.startswith("/") and "\x00" not in cleaned
    assert ".." not in parts and "." not in parts and "" not in parts
    joined = os.path.normpath(os.path.join("/srv/root", cleaned))
    assert joined.startswith("/srv/root/")


@SETTINGS
@given(relative=relative_paths, storage_name=st.sampled_from(["s", "", "other", "s\x00"]))
def test_locator_never_resolves_outside_the_root(
    storage: Path, relative: str, storage_name: str
) -> None:
    locator = StorageLocator({"s": storage})
    repo = shared_pb2.Repository(storage_name=storage_name, relative_path=relative)
    try:
        located = locator.locate(repo)
    except GitquorumError as exc:
        assert exc.message
        return
    assert storage_name == "s"
    assert _strictly_inside(storage, located.path), (relative, located.path)
    real = Path(os.path.realpath(located.path)).relative_to(os.path.realpath(storage))
    assert real.parts[0] != INTERNAL_DIR


@SETTINGS
@given(
    relative=st.sampled_from(["group/repo.git", "repo.git"]),
    object_dir=relative_paths,
    alternates=st.lists(relative_paths, max_size=3),
)
def test_quarantine_directories_stay_inside_the_repository(
    storage: Path, relative: str, object_dir: str, alternates: list[str]
) -> None:
    locator = StorageLocator({"s": storage})
    repo = shared_pb2.Repository(
        storage_name="s",
        relative_path=relative,
        git_object_directory=object_dir,
        git_alternate_object_directories=alternates,
    )
    try:
        located = locator.locate(repo)
    except GitquorumError:
        return
    env = located.git_env()
    repo_root = os.path.realpath(located.path)
    if object_dir:
        assert os.path.realpath(env["GIT_OBJECT_DIRECTORY"]).startswith(repo_root + os.sep)
    # Each alternate is its own entry: a ':' inside one cannot add another.
    if alternates:
        entries = env["GIT_ALTERNATE_OBJECT_DIRECTORIES"]
        assert entries.count(":") - sum(a.count(":") for a in alternates) == len(alternates) - 1


@pytest.mark.parametrize("name", ["link", "relative-link", "absolute", "self", "internal"])
def test_every_escaping_symlink_is_refused(storage: Path, name: str) -> None:
    locator = StorageLocator({"s": storage})
    # "self/x.git" is the root's own x.git: inside, so only "self" itself is refused.
    inside = () if name == "self" else (f"{name}/x.git",)
    for relative in (name, *inside, "group/up", "group/up/link/x.git"):
        with pytest.raises(InvalidArgument):
            locator.locate(shared_pb2.Repository(storage_name="s", relative_path=relative))


@SETTINGS
@given(relative=relative_paths)
def test_the_proxy_refuses_what_the_node_refuses(storage: Path, relative: str) -> None:
    """The proxy validates before routing: what it passes, a node accepts the spelling of."""
    try:
        cleaned = validate_repository_path(relative)
    except InvalidArgument:
        with pytest.raises(InvalidArgument):
            StorageLocator({"s": storage}).locate(
                shared_pb2.Repository(storage_name="s", relative_path=relative)
            )
        return
    assert cleaned == validate_relative(relative)
    assert cleaned.split("/")[0] != INTERNAL_DIR


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(url_paths(), st.text(max_size=60), st.sampled_from(TRAVERSALS)))
def test_gateway_paths_are_refused_or_safe(raw: str) -> None:
    try:
        target = paths.parse(raw)
    except (paths.InvalidPath, paths.UnknownEndpoint) as exc:
        assert str(exc)
        return
    # The gateway is at least as strict as the node: its path passes unchanged.
    assert validate_relative(target.relative_path) == target.relative_path
    assert ".." not in target.relative_path.split("/")
    assert not any(ord(c) < 0x20 for c in target.relative_path)


def test_gateway_refuses_encoded_traversals() -> None:
    for raw in (
        "/%2e%2e/x.git/info/refs",
        "/a/%2E%2E/%2e%2e/x.git/info/refs",
        "/..%2f..%2fetc/info/refs",
        "/%2fetc/passwd/info/refs",
        "/a%00b/info/refs",
        "//etc/info/refs",
    ):
        with pytest.raises(paths.InvalidPath):
            paths.parse(raw)
