"""StorageLocator: every client-supplied path stays inside its storage root."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gitquorum.errors import FailedPrecondition, InvalidArgument, NotFound
from gitquorum.gitaly import shared_pb2
from gitquorum.storage.locator import StorageLocator
from gitquorum.wire.paths import INTERNAL_DIR, validate_relative

STORAGE = "default"
# The fixtures are read-only across examples: one storage tree serves them all.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    storage = tmp_path / "storage"
    storage.mkdir()
    return storage


@pytest.fixture
def locator(root: Path) -> StorageLocator:
    return StorageLocator({STORAGE: root})


@pytest.fixture
def linked_root(root: Path, tmp_path: Path) -> Path:
    """A storage holding symlinks the fuzzer can walk through: out, in and a loop."""
    (tmp_path / "outside" / "a").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path / "outside")
    (root / "real" / "a").mkdir(parents=True)
    (root / "in").symlink_to(root / "real")
    (root / "loop").symlink_to(root / "loop")
    (root / "q.git" / "objects").mkdir(parents=True)
    (root / "q.git" / "out").symlink_to(tmp_path / "outside")
    (root / "q.git" / "in").symlink_to(root / "q.git" / "objects")
    return root


def repo(relative: str, storage: str = STORAGE, **fields: Any) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=storage, relative_path=relative, **fields)  # type: ignore[arg-type]


def make_git_dir(path: Path) -> Path:
    for entry in ("objects", "refs"):
        (path / entry).mkdir(parents=True, exist_ok=True)
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    return path


def inside(root: Path, path: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real.startswith(real_root + os.sep)


# Segments that have tricked path checks elsewhere: traversal, encodings that
# must stay literal, look-alike dots, Windows separators, empty segments.
_SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "repo.git",
        "%2e%2e",
        "%2E%2E",
        "%2f",
        "..%2f",
        "\u2024\u2024",
        "\uff0e\uff0e",
        "\u2025",
        "..\\..",
        "\\",
        "...",
        ".. ",
        " ..",
        "\x00",
        "a\x00b",
        INTERNAL_DIR,
        "~",
        "@hashed",
        "out",
        "in",
        "loop",
    ]
)
_PATHS = st.one_of(
    st.lists(st.one_of(_SEGMENTS, st.text(max_size=8)), max_size=8).map("/".join),
    st.lists(_SEGMENTS, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE_OK)
@given(relative=_PATHS)
@example("%2e%2e/%2e%2e/etc/passwd")
@example("\uff0e\uff0e/\uff0e\uff0e/etc")
@example("\u2024\u2024/x")
@example("..\\..\\etc")
@example("a//b///c")
@example("/etc/passwd")
@example("a/../../b")
@example("a\x00/b")
@example("out/a")
@example("in/a")
@example("loop/x")
def test_locate_never_escapes(locator: StorageLocator, linked_root: Path, relative: str) -> None:
    try:
        located = locator.locate(repo(relative))
    except InvalidArgument:
        return
    assert inside(linked_root, located.path), (relative, located.path)
    # Nothing was decoded or normalised away: the only change is dropped
    # empty and "." segments.
    assert located.relative_path == "/".join(p for p in relative.split("/") if p not in ("", "."))
    assert ".." not in located.relative_path.split("/")
    assert located.relative_path.split("/")[0] != INTERNAL_DIR


@pytest.mark.parametrize(
    "relative",
    ["%2e%2e", "%2e%2e/%2e%2e/x", "\u2024\u2024/x", "\uff0e\uff0e/x", "..\\x", "a\\..\\..\\b"],
)
def test_encoded_and_lookalike_dots_stay_literal(
    locator: StorageLocator, root: Path, relative: str
) -> None:
    located = locator.locate(repo(relative))
    assert located.path == root / relative
    assert located.relative_path == relative


@pytest.mark.parametrize(
    "relative",
    [
        "..",
        "../x",
        "a/../../x",
        "a/../b",
        "/etc/passwd",
        "//x",
        "a\x00b",
        "",
        ".",
        "./",
        "//",
        INTERNAL_DIR,
        f"{INTERNAL_DIR}/tmp/x",
        f"./{INTERNAL_DIR}/x",
    ],
)
def test_bad_relative_paths_are_invalid_argument(locator: StorageLocator, relative: str) -> None:
    with pytest.raises(InvalidArgument):
        locator.locate(repo(relative))


def test_double_slashes_are_normalised(locator: StorageLocator, root: Path) -> None:
    located = locator.locate(repo("group//project.git/"))
    assert located.relative_path == "group/project.git"
    assert located.path == root / "group" / "project.git"


def test_unknown_or_empty_storage(locator: StorageLocator) -> None:
    with pytest.raises(InvalidArgument, match="storage name not found"):
        locator.locate(repo("a.git", storage="nope"))
    with pytest.raises(InvalidArgument, match="storage name not set"):
        locator.locate(repo("a.git", storage=""))
    with pytest.raises(InvalidArgument, match="NUL"):
        locator.locate(repo("a.git", storage="default\x00"))
    with pytest.raises(InvalidArgument, match="repository not set"):
        locator.locate(None)
    with pytest.raises(InvalidArgument, match="repository not set"):
        locator.locate(shared_pb2.Repository())
    with pytest.raises(InvalidArgument, match="path not set"):
        locator.locate(repo(""))


def test_symlink_to_outside_directory_rejected(
    locator: StorageLocator, root: Path, tmp_path: Path
) -> None:
    outside = make_git_dir(tmp_path / "outside.git")
    (root / "group").mkdir()
    (root / "group" / "evil.git").symlink_to(outside)
    (root / "escape").symlink_to(tmp_path)
    for relative in ("group/evil.git", "escape/outside.git", "escape"):
        with pytest.raises(InvalidArgument, match="escapes"):
            locator.locate(repo(relative))
        with pytest.raises(InvalidArgument, match="escapes"):
            locator.repository(repo(relative))


def test_symlink_to_outside_file_rejected(
    locator: StorageLocator, root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    (root / "file.git").symlink_to(secret)
    with pytest.raises(InvalidArgument, match="escapes"):
        locator.locate(repo("file.git"))


def test_symlink_to_root_or_internal_dir_rejected(locator: StorageLocator, root: Path) -> None:
    (root / INTERNAL_DIR / "tmp").mkdir(parents=True)
    (root / "self").symlink_to(root)
    (root / "private").symlink_to(root / INTERNAL_DIR / "tmp")
    with pytest.raises(InvalidArgument, match="escapes"):
        locator.locate(repo("self"))
    with pytest.raises(InvalidArgument, match="internal"):
        locator.locate(repo("private"))


def test_symlink_inside_storage_allowed(locator: StorageLocator, root: Path) -> None:
    real = make_git_dir(root / "real" / "project.git")
    (root / "alias.git").symlink_to(real)
    located = locator.repository(repo("alias.git"))
    assert located.path == root / "alias.git"
    assert os.path.realpath(located.path) == os.path.realpath(real)


def test_dangling_symlink_outside_rejected(locator: StorageLocator, root: Path) -> None:
    (root / "dangling.git").symlink_to("/nonexistent/target.git")
    with pytest.raises(InvalidArgument):
        locator.locate(repo("dangling.git"))


def test_storage_root_reached_through_symlink(tmp_path: Path) -> None:
    # A root configured through a symlink (/var -> /private/var style) still works.
    real_root = tmp_path / "real-root"
    real_root.mkdir()
    (tmp_path / "link-root").symlink_to(real_root)
    locator = StorageLocator({STORAGE: tmp_path / "link-root"})
    make_git_dir(real_root / "a.git")
    assert locator.repository(repo("a.git")).path == tmp_path / "link-root" / "a.git"


def test_repository_not_found_and_invalid(locator: StorageLocator, root: Path) -> None:
    with pytest.raises(NotFound, match="repository not found"):
        locator.repository(repo("missing.git"))
    (root / "empty.git").mkdir()
    with pytest.raises(FailedPrecondition, match='"objects" does not exist'):
        locator.repository(repo("empty.git"))
    make_git_dir(root / "nohead.git")
    (root / "nohead.git" / "HEAD").unlink()
    with pytest.raises(FailedPrecondition, match='"HEAD" does not exist'):
        locator.repository(repo("nohead.git"))
    make_git_dir(root / "norefs.git")
    (root / "norefs.git" / "refs").rmdir()
    with pytest.raises(FailedPrecondition, match='"refs" does not exist'):
        locator.repository(repo("norefs.git"))
    (root / "plain-file.git").write_text("not a dir")
    with pytest.raises(NotFound):
        locator.repository(repo("plain-file.git"))
    make_git_dir(root / "ok.git")
    assert locator.repository(repo("ok.git")).path == root / "ok.git"


def test_a_located_repository_is_judged_again_when_its_directory_changes(
    locator: StorageLocator, root: Path, tmp_path: Path
) -> None:
    # Located once (the verdict is kept), then swapped for a symlink out of the
    # storage, into the internal directory, or removed: each is seen at once.
    outside = make_git_dir(tmp_path / "outside.git")
    (root / INTERNAL_DIR / "tmp").mkdir(parents=True)
    for target, error in ((outside, "escapes"), (root / INTERNAL_DIR / "tmp", "internal")):
        real = make_git_dir(root / "group" / "swapped.git")
        assert locator.repository(repo("group/swapped.git")).path == real
        os.rename(real, tmp_path / f"moved-{error}.git")
        real.symlink_to(target)
        with pytest.raises(InvalidArgument, match=error):
            locator.repository(repo("group/swapped.git"))
        real.unlink()
    # A parent directory swapped for a link out of the storage.
    make_git_dir(root / "parent" / "p.git")
    assert locator.repository(repo("parent/p.git")).path == root / "parent" / "p.git"
    os.rename(root / "parent", tmp_path / "parent-moved")
    make_git_dir(tmp_path / "elsewhere" / "p.git")
    (root / "parent").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArgument, match="escapes"):
        locator.repository(repo("parent/p.git"))
    make_git_dir(root / "gone.git")
    locator.repository(repo("gone.git"))
    os.rename(root / "gone.git", tmp_path / "gone.git")
    with pytest.raises(NotFound):
        locator.repository(repo("gone.git"))


def test_the_located_verdicts_are_bounded(root: Path) -> None:
    locator = StorageLocator({STORAGE: root}, max_located=3)
    for i in range(5):
        make_git_dir(root / f"r{i}.git")
        locator.repository(repo(f"r{i}.git"))
    assert len(locator._located) == 3


def test_locate_does_not_require_existence(locator: StorageLocator, root: Path) -> None:
    located = locator.locate(repo("new/project.git"))
    assert located.path == root / "new" / "project.git"
    assert not located.path.exists()
    assert located.git_env() == {}


def test_quarantine_directories_become_git_env(locator: StorageLocator, root: Path) -> None:
    make_git_dir(root / "q.git")
    # The quarantine must exist: repository() refuses one that does not.
    (root / "q.git" / "objects" / "incoming-abc").mkdir(parents=True)
    located = locator.repository(
        repo(
            "q.git",
            git_object_directory="objects/incoming-abc",
            git_alternate_object_directories=["objects", "objects/other"],
        )
    )
    env = located.git_env()
    assert env["GIT_OBJECT_DIRECTORY"] == str(root / "q.git" / "objects" / "incoming-abc")
    assert env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] == ":".join(
        [str(root / "q.git" / "objects"), str(root / "q.git" / "objects" / "other")]
    )


def test_a_missing_quarantine_directory_is_refused(locator: StorageLocator, root: Path) -> None:
    make_git_dir(root / "q.git")
    with pytest.raises(InvalidArgument, match="object directory does not exist"):
        locator.repository(repo("q.git", git_object_directory="objects/incoming-gone"))


@pytest.mark.parametrize(
    "field",
    ["git_object_directory", "git_alternate_object_directories"],
)
@pytest.mark.parametrize(
    "bad",
    ["../other.git/objects", "/tmp/objects", "objects/../../x", "obj\x00ects", "", "escape"],
)
def test_quarantine_directories_validated(
    locator: StorageLocator, root: Path, tmp_path: Path, field: str, bad: str
) -> None:
    make_git_dir(root / "q.git")
    if not (root / "q.git" / "escape").exists():
        (root / "q.git" / "escape").symlink_to(tmp_path)
    value: Any = [bad] if field == "git_alternate_object_directories" else bad
    if bad == "" and field == "git_object_directory":
        # An empty quarantine field means "no quarantine", not an error.
        assert locator.locate(repo("q.git", **{field: value})).git_env() == {}
        return
    with pytest.raises(InvalidArgument):
        locator.locate(repo("q.git", **{field: value}))


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(relative=_PATHS)
def test_quarantine_never_escapes_repository(
    locator: StorageLocator, linked_root: Path, relative: str
) -> None:
    try:
        located = locator.locate(repo("q.git", git_object_directory=relative))
    except InvalidArgument:
        return
    env = located.git_env()
    if not relative:
        assert env == {}
        return
    assert inside(linked_root / "q.git", Path(env["GIT_OBJECT_DIRECTORY"]))


def test_validate_relative_messages() -> None:
    with pytest.raises(InvalidArgument, match=re.escape("object directory contains '..'")):
        validate_relative("../x", "object directory")
    assert validate_relative("./a/./b/") == "a/b"


def test_internal_dir_created_on_demand(locator: StorageLocator, root: Path) -> None:
    path = locator.internal_dir(STORAGE, "tmp", "x")
    assert path == root / INTERNAL_DIR / "tmp" / "x"
    assert path.is_dir()
    with pytest.raises(InvalidArgument):
        locator.internal_dir("nope", "tmp")


def test_alternates_with_colons_are_quoted(locator: StorageLocator, root: Path) -> None:
    make_git_dir(root / "a:b.git")
    env = locator.locate(
        repo(
            "a:b.git",
            git_object_directory="objects/in:coming",
            git_alternate_object_directories=["objects", 'objects/"q', "objects:/etc"],
        )
    ).git_env()
    # One path per variable: GIT_OBJECT_DIRECTORY is never split.
    assert env["GIT_OBJECT_DIRECTORY"] == str(root / "a:b.git" / "objects" / "in:coming")
    base = str(root / "a:b.git")
    assert env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] == ":".join(
        [f'"{base}/objects"', f'"{base}/objects/\\"q"', f'"{base}/objects:/etc"']
    )


def test_plain_alternates_are_not_quoted(locator: StorageLocator, root: Path) -> None:
    make_git_dir(root / "plain.git")
    env = locator.locate(
        repo("plain.git", git_alternate_object_directories=["objects", "objects/x"])
    ).git_env()
    assert env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] == (
        f"{root}/plain.git/objects:{root}/plain.git/objects/x"
    )


def test_a_symlinked_repository_is_judged_on_every_call(
    locator: StorageLocator, root: Path, tmp_path: Path
) -> None:
    # The directory a link leads to, moved out of the storage (same inode) and
    # the link pointed at it there: the address now escapes the storage.
    real = make_git_dir(root / "real" / "project.git")
    (root / "alias.git").symlink_to(real)
    assert locator.repository(repo("alias.git")).path == root / "alias.git"
    (tmp_path / "out").mkdir()
    moved = tmp_path / "out" / "project.git"
    os.rename(real, moved)
    (root / "alias.git").unlink()
    (root / "alias.git").symlink_to(moved)
    with pytest.raises(InvalidArgument, match="escapes"):
        locator.repository(repo("alias.git"))
