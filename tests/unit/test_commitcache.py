"""Revisions resolved through refs from the files, checked against git's own parser."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gitquorum.gitaly import commit_pb2, shared_pb2
from gitquorum.storage.commitcache import ReachableAnswers, dwim
from gitquorum.storage.refread import PackedRefs
from tests.harness.gitrepo import git, make_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dwim")
    source = make_repo(base / "src", commits=4, branches=("feature",), tags=("v1.0",))
    bare = base / "repo.git"
    git("clone", "-q", "--bare", str(source), str(bare))

    def at(rev: str) -> str:
        return git("rev-parse", rev, cwd=bare).strip()

    # A tag and a branch with one name (tags come first), remotes, a one-level
    # ref file next to HEAD, a name that exists only as refs/<name>.
    git("update-ref", "refs/tags/feature", at("main~2"), cwd=bare)
    git("update-ref", "refs/remotes/origin/main", at("main~1"), cwd=bare)
    git("update-ref", "refs/remotes/upstream/HEAD", at("main~3"), cwd=bare)
    git("update-ref", "refs/top", at("main~1"), cwd=bare)
    (bare / "ONE_LEVEL").write_text(at("main~3") + "\n")
    git("symbolic-ref", "refs/heads/alias", "refs/heads/main", cwd=bare)
    git("pack-refs", "--all", cwd=bare)
    git("update-ref", "refs/heads/loose", at("main~1"), cwd=bare)
    return bare


def git_parses(repo: Path, revision: str) -> str | None:
    out = subprocess.run(
        ["git", "-c", "core.warnAmbiguousRefs=false", "rev-parse", "--verify", "-q", revision],
        cwd=repo,
        capture_output=True,
    )
    return out.stdout.decode().strip() if out.returncode == 0 else None


ANSWERED = (
    "main",
    "heads/main",
    "refs/heads/main",
    "feature",
    "heads/feature",
    "v1.0",
    "origin/main",
    "upstream",
    "top",
    "ONE_LEVEL",
    "loose",
)
# Left to cat-file: symbolic refs, other syntax, names no ref has (maybe abbreviated ids).
ASKED = ("HEAD", "alias", "main~1", "main^", "main@{0}", "nothing", "abc123", "v1.0^{}", "a..b")


@pytest.mark.parametrize("revision", ANSWERED)
def test_plain_names_resolve_as_git_resolves_them(repo: Path, revision: str) -> None:
    oid = dwim(PackedRefs(), repo, revision.encode())
    assert oid is not None
    assert oid.decode() == git_parses(repo, revision)


@pytest.mark.parametrize("revision", ASKED)
def test_everything_else_is_left_to_cat_file(repo: Path, revision: str) -> None:
    assert dwim(PackedRefs(), repo, revision.encode()) is None


def test_a_whole_object_id_is_never_read_as_a_ref(repo: Path, tmp_path: Path) -> None:
    oid = git("rev-parse", "main", cwd=repo).strip()
    answers = ReachableAnswers(PackedRefs())
    assert answers.target(repo, oid.encode()) is None
    assert answers.target(repo, b"main") == oid.encode()


def test_answers_are_kept_by_key_and_bounded(tmp_path: Path) -> None:
    answers = ReachableAnswers(PackedRefs(), max_entries=2)
    one = commit_pb2.FindCommitResponse(commit=shared_pb2.GitCommit(id="1" * 40))
    answers.put(("commit", tmp_path, b"1" * 40, False), one)
    assert answers.get(("commit", tmp_path, b"1" * 40, False)) is one
    assert answers.get(("commit", tmp_path, b"1" * 40, True)) is None
    assert answers.get(("commit", tmp_path / "other", b"1" * 40, False)) is None
    answers.put(("exists", tmp_path, b"2" * 40), True)
    answers.put(("exists", tmp_path, b"3" * 40), True)
    assert answers.get(("commit", tmp_path, b"1" * 40, False)) is None
    assert answers.get(("exists", tmp_path, b"3" * 40)) is True


def test_forget_drops_the_answers_of_one_repository(tmp_path: Path) -> None:
    answers = ReachableAnswers(PackedRefs())
    kept, other = tmp_path / "a.git", tmp_path / "b.git"
    for repo in (kept, other):
        answers.put(("exists", repo, b"1" * 40), True)
        answers.put(("entry", repo, b"1" * 40, b"README.md"), "entry")
    answers.forget(other)
    assert answers.get(("exists", kept, b"1" * 40)) is True
    assert answers.get(("entry", kept, b"1" * 40, b"README.md")) == "entry"
    assert answers.get(("exists", other, b"1" * 40)) is None
    assert answers.get(("entry", other, b"1" * 40, b"README.md")) is None
