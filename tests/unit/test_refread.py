"""Single refs read from the files, checked against git on real repositories."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gitquorum.storage import refread
from gitquorum.storage.refread import PackedRefs, Unsure, parse_packed_refs
from tests.harness.gitrepo import git, make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A bare repository with loose branches and tags."""
    source = make_repo(tmp_path / "src", commits=3, branches=("feature", "dev"))
    bare = tmp_path / "repo.git"
    git("clone", "-q", "--bare", str(source), str(bare))
    # A clone packs what it fetched: loosen main and feature again.
    for name in ("refs/heads/main", "refs/heads/feature"):
        git("update-ref", name, rev(bare, name), cwd=bare)
    return bare


def rev(repo: Path, name: str) -> str:
    return git("rev-parse", "--verify", "--quiet", f"{name}^{{}}", cwd=repo).strip()


def git_says(repo: Path, name: str) -> bytes | None:
    out = git("for-each-ref", "--format=%(objectname)", name, cwd=repo).strip()
    return out.encode() if out else None


def test_loose_and_packed_refs_read_as_git_reads_them(repo: Path) -> None:
    git("pack-refs", "--all", cwd=repo)
    git("update-ref", "refs/heads/main", rev(repo, "refs/heads/main~1"), cwd=repo)
    packed = PackedRefs()
    for name in ("refs/heads/main", "refs/heads/feature", "refs/heads/dev", "refs/tags/v1.1"):
        assert packed.resolve(repo, name.encode()) == git_says(repo, name), name
    # Loose main shadows its stale packed entry.
    assert packed.refs(repo)[b"refs/heads/main"] != packed.resolve(repo, b"refs/heads/main")


def test_absent_refs_and_ref_directories_are_none(repo: Path) -> None:
    packed = PackedRefs()
    assert packed.resolve(repo, b"refs/heads/nope") is None
    # A directory of refs is not a ref (refs/heads holds main, feature, ...).
    assert packed.resolve(repo, b"refs/heads") is None
    # Below a file: no such ref either.
    assert packed.resolve(repo, b"refs/heads/main/sub") is None


def test_a_rewritten_packed_refs_is_read_again(repo: Path) -> None:
    packed = PackedRefs()
    git("pack-refs", "--all", cwd=repo)
    first = packed.resolve(repo, b"refs/heads/dev")
    assert first == git_says(repo, "refs/heads/dev")
    older = rev(repo, "refs/heads/main~2")
    # Moved, then packed again: git rewrites packed-refs and drops the loose file.
    git("update-ref", "refs/heads/dev", older, cwd=repo)
    git("pack-refs", "--all", cwd=repo)
    assert not (repo / "refs" / "heads" / "dev").exists()
    assert packed.resolve(repo, b"refs/heads/dev") == older.encode() != first
    git("update-ref", "-d", "refs/heads/dev", cwd=repo)
    assert packed.resolve(repo, b"refs/heads/dev") is None
    (repo / "packed-refs").unlink()
    assert packed.refs(repo) == {}


def test_what_only_git_should_read_is_unsure(repo: Path) -> None:
    packed = PackedRefs()
    git("symbolic-ref", "refs/heads/alias", "refs/heads/main", cwd=repo)
    with pytest.raises(Unsure):
        packed.resolve(repo, b"refs/heads/alias")
    (repo / "refs" / "heads" / "garbage").write_bytes(b"not an object id\n")
    with pytest.raises(Unsure):
        packed.resolve(repo, b"refs/heads/garbage")
    (repo / "refs" / "heads" / "garbage").unlink()
    (repo / "packed-refs").write_bytes(b"# pack-refs with: peeled\nnonsense line\n")
    with pytest.raises(Unsure):
        packed.resolve(repo, b"refs/heads/elsewhere")


def test_packed_refs_parsing_skips_comments_and_peeled_lines() -> None:
    a, b = "a" * 40, "b" * 40
    data = f"# pack-refs with: peeled fully-peeled sorted \n{a} refs/tags/t\n^{b}\n{b} refs/x\n"
    assert parse_packed_refs(data.encode()) == {b"refs/tags/t": a.encode(), b"refs/x": b.encode()}


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    packed = PackedRefs(max_repositories=2)
    repos = []
    for i in range(3):
        path = tmp_path / f"r{i}.git"
        path.mkdir()
        (path / "config").write_bytes(b"")
        (path / "packed-refs").write_bytes(f"{'c' * 40} refs/heads/r{i}\n".encode())
        repos.append(path)
        assert packed.resolve(path, f"refs/heads/r{i}".encode()) == b"c" * 40
    assert len(packed._files) == 2
    os.utime(repos[0] / "packed-refs")
    assert packed.resolve(repos[0], b"refs/heads/r0") == b"c" * 40


def test_a_ref_packed_between_two_names_is_still_found(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refs/heads/foo packed, refs/tags/foo loose: "foo" is the tag for git.
    git("update-ref", "refs/heads/foo", rev(repo, "refs/heads/main~1"), cwd=repo)
    git("pack-refs", "--all", cwd=repo)
    tag = rev(repo, "refs/heads/main")
    git("update-ref", "refs/tags/foo", tag, cwd=repo)
    names = [b"foo", b"refs/foo", b"refs/tags/foo", b"refs/heads/foo"]
    loose = refread._loose

    def packing_before_the_tag(path: str) -> bytes | None:
        if path.endswith("/refs/tags/foo"):
            # A concurrent pack-refs: the tag moves into a new packed-refs.
            git("pack-refs", "--all", cwd=repo)
            assert not (repo / "refs" / "tags" / "foo").exists()
        return loose(path)

    monkeypatch.setattr(refread, "_loose", packing_before_the_tag)
    assert PackedRefs().first(repo, names) == tag.encode()


def _as_reftable(repo: Path, *, config: bool, directory: bool) -> None:
    """The layout of a reftable repository, made by hand: ``refs/heads`` a file."""
    shutil.rmtree(repo / "refs" / "heads")
    (repo / "packed-refs").unlink(missing_ok=True)
    (repo / "refs" / "heads").write_bytes(b"this repository uses the reftable format\n")
    if directory:
        (repo / "reftable").mkdir()
        (repo / "reftable" / "tables.list").write_bytes(b"")
    if config:
        git("config", "core.repositoryformatversion", "1", cwd=repo)
        git("config", "extensions.refStorage", "reftable", cwd=repo)


@pytest.mark.parametrize(("config", "directory"), [(True, True), (True, False), (False, True)])
def test_a_repository_not_in_the_files_backend_is_unsure(
    repo: Path, config: bool, directory: bool
) -> None:
    packed = PackedRefs()
    assert packed.resolve(repo, b"refs/heads/main") is not None
    _as_reftable(repo, config=config, directory=directory)
    for name in (b"refs/heads/main", b"refs/tags/v1.1", b"refs/heads/nope"):
        with pytest.raises(Unsure):
            packed.resolve(repo, name)
    with pytest.raises(Unsure):
        packed.first(repo, [b"main", b"refs/heads/main"])


def test_a_files_backend_named_in_the_config_is_read(repo: Path) -> None:
    main = git_says(repo, "refs/heads/main")
    git("config", "core.repositoryformatversion", "1", cwd=repo)
    git("config", "extensions.refStorage", "files", cwd=repo)
    assert main is not None and PackedRefs().resolve(repo, b"refs/heads/main") == main


def test_a_packed_refs_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    """Same inode, same size, modification time put back: the change time
    still tells the new content from the one read before."""
    repo = tmp_path / "r.git"
    repo.mkdir()
    (repo / "config").write_bytes(b"")
    packed_refs = repo / "packed-refs"
    packed_refs.write_bytes(f"{'c' * 40} refs/heads/main\n".encode())
    packed = PackedRefs()
    assert packed.resolve(repo, b"refs/heads/main") == b"c" * 40
    before = os.stat(packed_refs)
    with open(packed_refs, "r+b") as f:
        f.write(f"{'d' * 40} refs/heads/main\n".encode())
    os.utime(packed_refs, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(packed_refs)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert packed.resolve(repo, b"refs/heads/main") == b"d" * 40


def test_forget_drops_what_is_kept_for_a_repository(repo: Path, tmp_path: Path) -> None:
    packed = PackedRefs()
    git("pack-refs", "--all", cwd=repo)
    assert packed.resolve(repo, b"refs/heads/dev") is not None
    assert str(repo) in packed._files and str(repo) in packed._backends
    packed.forget(repo)
    assert str(repo) not in packed._files and str(repo) not in packed._backends


def test_a_name_outside_refs_is_left_to_git(repo: Path) -> None:
    main = git_says(repo, "refs/heads/main")
    assert main is not None
    (repo / "worktrees" / "x").mkdir(parents=True)
    (repo / "worktrees" / "x" / "ORIG_HEAD").write_bytes(main + b"\n")
    (repo / "ORIG_HEAD").write_bytes(main + b"\n")
    packed = PackedRefs()
    for name in (b"worktrees/x/ORIG_HEAD", b"ORIG_HEAD", b"HEAD"):
        with pytest.raises(Unsure):
            packed.resolve(repo, name)


def _counting_parser(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    parse = refread.parse_packed_refs

    def counted(data: bytes) -> dict[bytes, bytes]:
        calls.append(len(data))
        return parse(data)

    monkeypatch.setattr(refread, "parse_packed_refs", counted)
    return calls


def test_a_large_packed_refs_is_left_to_git_unread(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git("pack-refs", "--all", cwd=repo)
    main = git_says(repo, "refs/heads/main")
    assert main is not None
    lines = [f"{main.decode()} refs/heads/many/{i:06}\n" for i in range(25_000)]
    with open(repo / "packed-refs", "a") as f:
        f.writelines(lines)
    assert os.path.getsize(repo / "packed-refs") > refread.MAX_FILE_BYTES
    calls = _counting_parser(monkeypatch)
    packed = PackedRefs()
    for _ in range(2):
        for name in ("refs/heads/many/012345", "refs/heads/dev", "refs/heads/nope"):
            with pytest.raises(Unsure):
                packed.resolve(repo, name.encode())
    assert calls == []
    # What git answers instead, for the record: the file is a valid one.
    assert git_says(repo, "refs/heads/many/012345") == main
    # A loose ref is found before packed-refs is looked at.
    older = rev(repo, "refs/heads/main~1")
    git("update-ref", "refs/heads/main", older, cwd=repo)
    assert packed.resolve(repo, b"refs/heads/main") == older.encode()


def test_a_packed_refs_left_to_git_is_judged_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "sha256.git"
    repo.mkdir()
    (repo / "config").write_bytes(b"")
    (repo / "packed-refs").write_bytes(f"{'e' * 64} refs/heads/main\n".encode())
    calls = _counting_parser(monkeypatch)
    packed = PackedRefs()
    for _ in range(3):
        with pytest.raises(Unsure):
            packed.resolve(repo, b"refs/heads/main")
    assert len(calls) == 1
    (repo / "packed-refs").write_bytes(f"{'e' * 40} refs/heads/main\n".encode())
    assert packed.resolve(repo, b"refs/heads/main") == b"e" * 40
    assert len(calls) == 2


def test_the_bytes_kept_are_bounded(tmp_path: Path) -> None:
    packed = PackedRefs(max_file_bytes=100, max_bytes=120)
    for i in range(3):
        path = tmp_path / f"r{i}.git"
        path.mkdir()
        (path / "config").write_bytes(b"")
        (path / "packed-refs").write_bytes(f"{'c' * 40} refs/heads/r{i}\n".encode())
        assert packed.resolve(path, f"refs/heads/r{i}".encode()) == b"c" * 40
    assert list(packed._files) == [str(tmp_path / "r1.git"), str(tmp_path / "r2.git")]
    assert packed._bytes == 2 * os.path.getsize(tmp_path / "r2.git" / "packed-refs")
