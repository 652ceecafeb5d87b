"""CommitService on a real node, checked against the git CLI run on the replica's disk."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gitquorum.gitaly import (
    commit_pb2,
    commit_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.conftest import Target
from tests.harness import gitrepo
from tests.harness.gitrepo import git

BINARY_SIZE = 2 * 1024 * 1024 + 123
BASE_DATE = 1_700_000_000
INVALID = grpc.StatusCode.INVALID_ARGUMENT
Seeded = tuple[shared_pb2.Repository, Path]


def _dated(step: int) -> dict[str, str]:
    stamp = f"@{BASE_DATE + step * 3600} +0200"
    return {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}


def build_source(path: Path) -> Path:
    """A repository with every shape the commit RPCs care about."""
    src = gitrepo.make_repo(
        path,
        commits=3,
        branches=("feature", "dev"),
        tags=("v1.0",),
        annotated_tags=("v1.1",),
        binary_size=BINARY_SIZE,
    )
    # A chain of single-subtree directories (flat paths), an executable, a symlink.
    (src / "deep/a/b/c").mkdir(parents=True)
    (src / "deep/a/b/c/leaf.txt").write_text("leaf\n")
    (src / "deep/a/b/c/other.txt").write_text("other\n")
    (src / "docs").mkdir()
    (src / "docs/guide.md").write_text("guide\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o755)
    os.symlink("README.md", src / "link")
    git("add", "-A", cwd=src)
    git("commit", "-q", "-m", "layout", cwd=src, env=_dated(1))
    # A submodule entry (gitlink) pointing at an existing commit.
    sub_oid = git("rev-parse", "HEAD~1", cwd=src).strip()
    git("update-index", "--add", "--cacheinfo", f"160000,{sub_oid},vendor/sub", cwd=src)
    git("commit", "-q", "-m", "add submodule", cwd=src, env=_dated(2))
    # A side branch merged back, with distinct dates for date-order walks.
    git("checkout", "-q", "-b", "side", "HEAD~2", cwd=src)
    (src / "side.txt").write_text("side\n")
    git("add", "side.txt", cwd=src)
    git("commit", "-q", "-m", "side work", cwd=src, env=_dated(3))
    git("checkout", "-q", "main", cwd=src)
    git("merge", "-q", "--no-ff", "-m", "merge side", "side", cwd=src, env=_dated(4))
    # Trailers and a body longer than Gitaly's 10 KiB cut.
    message = (
        "with trailers\n\n" + "long body line\n" * 1000 + "\n"
        "Change-Id: I0123\nSigned-off-by: Ada Author <ada@example.com>\n"
        "Reviewed-by: Someone\n  folded value\n"
    )
    (src / "trailers.txt").write_text("t\n")
    git("add", "trailers.txt", cwd=src)
    git("commit", "-q", "-F", "-", cwd=src, input=message.encode(), env=_dated(5))
    # Commits carrying signature headers (not verified, only classified).
    head = git("rev-parse", "HEAD", cwd=src).strip()
    tree = git("rev-parse", "HEAD^{tree}", cwd=src).strip()
    for kind, first in (
        ("pgp", "-----BEGIN PGP SIGNATURE-----"),
        ("ssh", "-----BEGIN SSH SIGNATURE-----"),
    ):
        raw = (
            f"tree {tree}\nparent {head}\n"
            f"author Ada Author <ada@example.com> {BASE_DATE} +0100\n"
            f"committer Cy Committer <cy@example.com> {BASE_DATE} +0100\n"
            f"gpgsig {first}\n \n abcdef\n -----END SIGNATURE-----\n\nsigned {kind}\n"
        )
        oid = git(
            "hash-object", "-t", "commit", "-w", "--stdin", cwd=src, input=raw.encode()
        ).strip()
        git("update-ref", f"refs/heads/signed-{kind}", oid, cwd=src)
    return src


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_source(tmp_path_factory.mktemp("commit-service") / "src")


# Read-only tests share one repository per target, seeded through the target itself.
_SEEDED: dict[str, Seeded] = {}


def _disk(target: Target, repo: shared_pb2.Repository) -> Path:
    # Differential checks read the replica's disk: through a proxy, the primary's replica.
    return target.disk_path(repo)


@pytest.fixture
async def seeded(channel: grpc.aio.Channel, target: Target, source: Path, workdir: Path) -> Seeded:
    if target.address not in _SEEDED:
        repo = target.repository(f"commit/{uuid.uuid4().hex}.git")
        await gitrepo.seed(channel, repo, source, workdir)
        _SEEDED[target.address] = (repo, _disk(target, repo))
    return _SEEDED[target.address]


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> commit_pb2_grpc.CommitServiceStub:
    return commit_pb2_grpc.CommitServiceStub(channel)


def disk(path: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=path, capture_output=True, check=True).stdout


def disk_rc(path: Path, *args: str) -> int:
    return subprocess.run(["git", *args], cwd=path, capture_output=True).returncode


def expected_commit(path: Path, revision: str, trailers: bool = False) -> shared_pb2.GitCommit:
    """A GitCommit built from git's own formatting, independent of the node's parser."""
    fmt = "%H%x00%T%x00%P%x00%an%x00%ae%x00%at%x00%ad%x00%cn%x00%ce%x00%ct%x00%cd"
    out = disk(path, "show", "-s", "--date=format:%z", f"--format={fmt}", f"{revision}^{{commit}}")
    oid, tree, parents, an, ae, at, ad, cn, ce, ct, cd = out.rstrip(b"\n").split(b"\x00")
    raw = disk(path, "cat-file", "commit", oid.decode())
    message = raw.split(b"\n\n", 1)[1] if b"\n\n" in raw else b""
    commit = shared_pb2.GitCommit(
        id=oid.decode(),
        tree_id=tree.decode(),
        parent_ids=parents.decode().split(),
        author=shared_pb2.CommitAuthor(
            name=an, email=ae, date=Timestamp(seconds=int(at)), timezone=ad
        ),
        committer=shared_pb2.CommitAuthor(
            name=cn, email=ce, date=Timestamp(seconds=int(ct)), timezone=cd
        ),
    )
    if message:
        commit.subject = message.split(b"\n", 1)[0].rstrip(b"\r")
        commit.body = message[: 10 * 1024]
        commit.body_size = len(message)
    if b"\ngpgsig -----BEGIN PGP" in raw:
        commit.signature_type = shared_pb2.PGP
    elif b"\ngpgsig -----BEGIN SSH" in raw:
        commit.signature_type = shared_pb2.SSH
    if trailers:
        shown = disk(
            path, "show", "--no-patch", "--format=%(trailers:unfold,separator=%x00)", oid.decode()
        )
        for item in shown.rstrip(b"\n").split(b"\x00"):
            key, sep, value = item.partition(b":")
            if sep and key:
                commit.trailers.add(key=key, value=value.strip())
    return commit


async def collect(call: Any) -> list[Any]:
    return [message async for message in call]


async def status_of(awaitable: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(awaitable, "__aiter__"):
            await collect(awaitable)
        else:
            await awaitable
    return err.value.code()


# --- FindCommit ----------------------------------------------------------------------------------

REVISIONS = [
    "HEAD",
    "main",
    "feature",
    "dev",
    "side",
    "v1.0",
    "v1.1",
    "HEAD~1",
    "HEAD~1^2",
    "HEAD~2",
    "refs/heads/signed-pgp",
    "signed-ssh",
]


async def test_find_commit_matches_git(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    for revision in REVISIONS:
        response = await stub.FindCommit(
            commit_pb2.FindCommitRequest(repository=repo, revision=revision.encode())
        )
        assert response.commit == expected_commit(path, revision), revision
    by_oid = disk(path, "rev-parse", "HEAD~2").decode().strip()
    response = await stub.FindCommit(
        commit_pb2.FindCommitRequest(repository=repo, revision=by_oid.encode())
    )
    assert response.commit.id == by_oid


async def test_find_commit_trailers_and_long_body(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    head = await stub.FindCommit(
        commit_pb2.FindCommitRequest(repository=repo, revision=b"main", trailers=True)
    )
    expected = expected_commit(path, "main", trailers=True)
    assert head.commit == expected
    assert [t.key for t in head.commit.trailers] == [b"Change-Id", b"Signed-off-by", b"Reviewed-by"]
    assert head.commit.trailers[2].value == b"Someone folded value"
    assert head.commit.body_size > 10 * 1024 and len(head.commit.body) == 10 * 1024
    plain = await stub.FindCommit(commit_pb2.FindCommitRequest(repository=repo, revision=b"main"))
    assert not plain.commit.trailers


async def test_find_commit_signature_types(stub: Any, seeded: Seeded) -> None:
    repo, _ = seeded
    for ref, kind in (
        (b"signed-pgp", shared_pb2.PGP),
        (b"signed-ssh", shared_pb2.SSH),
        (b"main", shared_pb2.NONE),
    ):
        response = await stub.FindCommit(
            commit_pb2.FindCommitRequest(repository=repo, revision=ref)
        )
        assert response.commit.signature_type == kind


async def test_find_commit_unknown_is_empty_ok(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    tree = disk(path, "rev-parse", "HEAD^{tree}").strip()
    for revision in (b"does-not-exist", b"0" * 40, tree, b"HEAD@{u}", b"main~999"):
        response = await stub.FindCommit(
            commit_pb2.FindCommitRequest(repository=repo, revision=revision)
        )
        assert not response.HasField("commit"), revision


@pytest.mark.parametrize(
    "revision", [b"", b"-main", b"--output=/tmp/x", b"ma in", b"main:README.md", b"a\x00b"]
)
async def test_find_commit_invalid_revision(stub: Any, seeded: Seeded, revision: bytes) -> None:
    repo, _ = seeded
    code = await status_of(
        stub.FindCommit(commit_pb2.FindCommitRequest(repository=repo, revision=revision))
    )
    assert code == INVALID


# --- ListCommits ---------------------------------------------------------------------------------


def _ids(responses: list[commit_pb2.ListCommitsResponse]) -> list[str]:
    return [c.id for r in responses for c in r.commits]


LIST_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"revisions": ["main"]}, ["main"]),
    ({"revisions": ["--all"]}, ["--all"]),
    ({"revisions": ["main", "^feature"]}, ["main", "^feature"]),
    ({"revisions": ["main", "--not", "side"]}, ["main", "--not", "side"]),
    (
        {"revisions": ["main"], "order": commit_pb2.ListCommitsRequest.TOPO},
        ["--topo-order", "main"],
    ),
    (
        {"revisions": ["main"], "order": commit_pb2.ListCommitsRequest.DATE},
        ["--date-order", "main"],
    ),
    ({"revisions": ["main"], "reverse": True}, ["--reverse", "main"]),
    ({"revisions": ["main"], "max_parents": 1}, ["--max-parents=1", "main"]),
    ({"revisions": ["main"], "first_parent": True}, ["--first-parent", "main"]),
    ({"revisions": ["main", "feature"], "disable_walk": True}, ["--no-walk", "main", "feature"]),
    ({"revisions": ["main"], "skip": 2}, ["--skip=2", "main"]),
    ({"revisions": ["main"], "paths": [b"src"]}, ["main", "--", "src"]),
    ({"revisions": ["main"], "author": b"Ada"}, ["--author=Ada", "main"]),
    ({"revisions": ["main"], "author": b"nobody"}, ["--author=nobody", "main"]),
    (
        {"revisions": ["main"], "commit_message_patterns": [b"COMMIT"], "ignore_case": True},
        ["--grep=COMMIT", "--regexp-ignore-case", "main"],
    ),
    (
        {"revisions": ["--all"], "after": Timestamp(seconds=BASE_DATE + 2 * 3600)},
        ["--all", f"--after=@{BASE_DATE + 2 * 3600}"],
    ),
    (
        {"revisions": ["--all"], "before": Timestamp(seconds=BASE_DATE + 3 * 3600)},
        ["--all", f"--before=@{BASE_DATE + 3 * 3600}"],
    ),
]


@pytest.mark.parametrize(("fields", "git_args"), LIST_CASES)
async def test_list_commits_matches_rev_list(
    stub: Any,
    seeded: Seeded,
    fields: dict[str, Any],
    git_args: list[str],
) -> None:
    repo, path = seeded
    responses = await collect(
        stub.ListCommits(commit_pb2.ListCommitsRequest(repository=repo, **fields))
    )
    expected = disk(path, "rev-list", *git_args).decode().split()
    assert _ids(responses) == expected


async def test_list_commits_full_messages_and_pagination(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    everything = disk(path, "rev-list", "--all").decode().split()
    responses = await collect(
        stub.ListCommits(commit_pb2.ListCommitsRequest(repository=repo, revisions=["--all"]))
    )
    commits = [c for r in responses for c in r.commits]
    for commit in commits[:6]:
        assert commit == expected_commit(path, commit.id)
    # Walk the whole history two at a time, as a client would.
    seen: list[str] = []
    token = ""
    while True:
        page = _ids(
            await collect(
                stub.ListCommits(
                    commit_pb2.ListCommitsRequest(
                        repository=repo,
                        revisions=["--all"],
                        pagination_params=shared_pb2.PaginationParameter(limit=2, page_token=token),
                    )
                )
            )
        )
        if not page:
            break
        assert len(page) <= 2
        seen += page
        token = page[-1]
    assert seen == everything


async def test_list_commits_many_messages(
    stub: Any, channel: grpc.aio.Channel, target: Target, workdir: Path
) -> None:
    source = workdir / "many"
    source.mkdir()
    git("init", "-q", "-b", "main", str(source))
    # 250 commits through fast-import: more than one response message.
    stream = []
    for i in range(250):
        stream.append(
            f"commit refs/heads/main\ncommitter C <c@x> {BASE_DATE + i} +0000\n"
            f"data <<EOT\nc{i}\nEOT\n\n"
        )
    git("fast-import", "--quiet", cwd=source, input="".join(stream).encode())
    repo = target.repository()
    await gitrepo.seed(channel, repo, source, workdir)
    responses = await collect(
        stub.ListCommits(commit_pb2.ListCommitsRequest(repository=repo, revisions=["main"]))
    )
    assert len(responses) >= 2
    assert _ids(responses) == disk(target.disk_path(repo), "rev-list", "main").decode().split()


@pytest.mark.parametrize(
    "revisions", [[], ["-x"], ["--output=/tmp/x"], ["does-not-exist"], ["a\x00b"]]
)
async def test_list_commits_invalid(stub: Any, seeded: Seeded, revisions: list[str]) -> None:
    repo, _ = seeded
    code = await status_of(
        stub.ListCommits(commit_pb2.ListCommitsRequest(repository=repo, revisions=revisions))
    )
    assert code == INVALID


# --- CommitIsAncestor ----------------------------------------------------------------------------


async def test_commit_is_ancestor_matches_git(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    pairs = [
        ("feature", "main"),
        ("main", "feature"),
        ("side", "main"),
        ("main", "main"),
        ("v1.1", "main"),
        ("dev", "side"),
        ("does-not-exist", "main"),
        ("main", "0" * 40),
    ]
    for ancestor, child in pairs:
        response = await stub.CommitIsAncestor(
            commit_pb2.CommitIsAncestorRequest(
                repository=repo, ancestor_id=ancestor, child_id=child
            )
        )
        expected = disk_rc(path, "merge-base", "--is-ancestor", ancestor, child) == 0
        assert response.value is expected, (ancestor, child)


@pytest.mark.parametrize(
    ("ancestor", "child"), [("", "main"), ("main", ""), ("-x", "main"), ("main", "--all")]
)
async def test_commit_is_ancestor_invalid(
    stub: Any, seeded: Seeded, ancestor: str, child: str
) -> None:
    repo, _ = seeded
    request = commit_pb2.CommitIsAncestorRequest(
        repository=repo, ancestor_id=ancestor, child_id=child
    )
    assert await status_of(stub.CommitIsAncestor(request)) == INVALID


# --- CountCommits --------------------------------------------------------------------------------

COUNT_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"revision": b"main"}, ["main"]),
    ({"revision": b"feature"}, ["feature"]),
    ({"all": True}, ["--all"]),
    ({"revisions": [b"main", b"^feature"]}, ["main", "^feature"]),
    ({"revision": b"main", "path": b"src"}, ["main", "--", "src"]),
    ({"revision": b"main", "max_count": 3}, ["--max-count=3", "main"]),
    ({"revision": b"main", "first_parent": True}, ["--first-parent", "main"]),
    (
        {"revision": b"main", "before": Timestamp(seconds=BASE_DATE + 3 * 3600)},
        [f"--before=@{BASE_DATE + 3 * 3600}", "main"],
    ),
    (
        {"all": True, "after": Timestamp(seconds=BASE_DATE + 2 * 3600)},
        ["--all", f"--after=@{BASE_DATE + 2 * 3600}"],
    ),
    (
        {
            "revision": b"main",
            "path": b"src/*",
            "global_options": shared_pb2.GlobalOptions(literal_pathspecs=True),
        },
        ["--literal-pathspecs", "main", "--", "src/*"],
    ),
]


@pytest.mark.parametrize(("fields", "git_args"), COUNT_CASES)
async def test_count_commits_matches_git(
    stub: Any,
    seeded: Seeded,
    fields: dict[str, Any],
    git_args: list[str],
) -> None:
    repo, path = seeded
    response = await stub.CountCommits(commit_pb2.CountCommitsRequest(repository=repo, **fields))
    if git_args[0] == "--literal-pathspecs":
        expected = int(disk(path, "--literal-pathspecs", "rev-list", "--count", *git_args[1:]))
    else:
        expected = int(disk(path, "rev-list", "--count", *git_args))
    assert response.count == expected


async def test_count_commits_unknown_revision_is_zero(stub: Any, seeded: Seeded) -> None:
    repo, _ = seeded
    response = await stub.CountCommits(
        commit_pb2.CountCommitsRequest(repository=repo, revision=b"nope")
    )
    assert response.count == 0


@pytest.mark.parametrize(
    "fields", [{}, {"revision": b"-x"}, {"revision": b"a b"}, {"revisions": [b"--all"]}]
)
async def test_count_commits_invalid(stub: Any, seeded: Seeded, fields: dict[str, Any]) -> None:
    repo, _ = seeded
    assert (
        await status_of(
            stub.CountCommits(commit_pb2.CountCommitsRequest(repository=repo, **fields))
        )
        == INVALID
    )


# --- TreeEntry -----------------------------------------------------------------------------------


def _ls(path: Path, revision: str, entry: str) -> tuple[int, str, str]:
    out = disk(path, "ls-tree", revision, "--", entry).decode()
    meta = out.split("\t")[0].split()
    return int(meta[0], 8), meta[1], meta[2]


async def test_tree_entry_blobs(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    for entry in ("README.md", "src/file1.txt", "run.sh", "link", "deep/a/b/c/leaf.txt"):
        responses = await collect(
            stub.TreeEntry(
                commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=entry.encode())
            )
        )
        mode, _kind, oid = _ls(path, "main", entry)
        data = disk(path, "cat-file", "blob", oid)
        first = responses[0]
        assert first.type == commit_pb2.TreeEntryResponse.BLOB
        assert (first.oid, first.mode, first.size) == (oid, mode, len(data))
        assert b"".join(r.data for r in responses) == data
        assert all(not r.oid for r in responses[1:])


async def test_tree_entry_binary_is_chunked(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    responses = await collect(
        stub.TreeEntry(
            commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=b"blob.bin")
        )
    )
    data = disk(path, "cat-file", "blob", "main:blob.bin")
    assert len(responses) > 1
    assert all(len(r.data) <= 1024 * 1024 for r in responses)
    assert responses[0].size == BINARY_SIZE and b"".join(r.data for r in responses) == data
    limited = await collect(
        stub.TreeEntry(
            commit_pb2.TreeEntryRequest(
                repository=repo, revision=b"main", path=b"blob.bin", limit=1000
            )
        )
    )
    assert b"".join(r.data for r in limited) == data[:1000] and limited[0].size == BINARY_SIZE
    code = await status_of(
        stub.TreeEntry(
            commit_pb2.TreeEntryRequest(
                repository=repo, revision=b"main", path=b"blob.bin", max_size=1000
            )
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    fits = await collect(
        stub.TreeEntry(
            commit_pb2.TreeEntryRequest(
                repository=repo, revision=b"main", path=b"README.md", max_size=10_000
            )
        )
    )
    assert fits[0].type == commit_pb2.TreeEntryResponse.BLOB


async def test_tree_entry_of_a_kept_small_blob_honours_limit_and_max_size(
    stub: Any, seeded: Seeded
) -> None:
    """A small blob of a commit a ref names is kept whole after its first read:
    later calls, limits and size checks answer from it exactly as from git."""
    repo, path = seeded
    data = disk(path, "cat-file", "blob", "main:README.md")
    assert 10 < len(data) <= 4096
    oid = disk(path, "rev-parse", "main:README.md").strip().decode()

    async def entry(**fields: Any) -> list[commit_pb2.TreeEntryResponse]:
        request = commit_pb2.TreeEntryRequest(
            repository=repo, revision=b"main", path=b"README.md", **fields
        )
        return await collect(stub.TreeEntry(request))

    for _ in range(2):
        whole = await entry()
        assert b"".join(r.data for r in whole) == data
        assert (whole[0].oid, whole[0].size, whole[0].mode) == (oid, len(data), 0o100644)
        limited = await entry(limit=5)
        assert b"".join(r.data for r in limited) == data[:5] and limited[0].size == len(data)
        assert await status_of(entry(max_size=len(data) - 1)) == grpc.StatusCode.FAILED_PRECONDITION
        assert b"".join(r.data for r in await entry(max_size=len(data))) == data


@pytest.mark.parametrize("replace_first", [True, False], ids=["replaced-before", "replaced-after"])
async def test_replace_refs_do_not_change_what_objects_read_as(
    stub: Any,
    channel: grpc.aio.Channel,
    target: Target,
    source: Path,
    workdir: Path,
    replace_first: bool,
) -> None:
    """Answers are kept per object id, and an object id names one content: the
    node ignores ``refs/replace/*`` (which clients can push), whether the
    replace ref appears after answers were kept or before anything was read."""
    if target.cluster is not None:
        pytest.skip("changes one replica's files directly")
    repo = target.repository(f"commit/replace-{uuid.uuid4().hex}.git")
    await gitrepo.seed(channel, repo, source, workdir)
    path = _disk(target, repo)
    commit = disk(path, "rev-parse", "main").strip().decode()
    blob = disk(path, "rev-parse", "main:README.md").strip().decode()
    expected = expected_commit(path, "main")
    readme = disk(path, "cat-file", "blob", blob)

    def replace() -> None:
        for name, other in ((commit, "main~1"), (blob, "main:docs/guide.md")):
            git("replace", name, disk(path, "rev-parse", other).strip().decode(), cwd=path)
        # A git honouring replace refs now reads something else.
        assert disk(path, "rev-parse", "main^{tree}") != disk(
            path, "--no-replace-objects", "rev-parse", "main^{tree}"
        )

    async def check() -> None:
        for revision in (b"main", commit.encode()):
            request = commit_pb2.FindCommitRequest(repository=repo, revision=revision)
            assert (await stub.FindCommit(request)).commit == expected, revision
        request = commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=b"README.md")
        entry = await collect(stub.TreeEntry(request))
        assert entry[0].oid == blob and b"".join(r.data for r in entry) == readme

    if replace_first:
        replace()
    # Answers kept, cat-file processes started.
    await check()
    if not replace_first:
        replace()
    await check()


async def test_a_repository_replaced_at_the_same_path_answers_anew(
    stub: Any, channel: grpc.aio.Channel, target: Target, source: Path, workdir: Path
) -> None:
    """Removed and created again with another history at the same path (what a
    repair does): nothing kept from the old repository answers for the new one."""
    repo = target.repository(f"commit/replaced-{uuid.uuid4().hex}.git")
    refs_stub = ref_pb2_grpc.RefServiceStub(channel)
    ghost = b"refs/heads/ghost"

    async def answers() -> tuple[str, bytes, bool]:
        found = await stub.FindCommit(
            commit_pb2.FindCommitRequest(repository=repo, revision=b"main")
        )
        entry = await collect(
            stub.TreeEntry(
                commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=b"README.md")
            )
        )
        exists = await refs_stub.RefExists(
            ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/feature")
        )
        return found.commit.id, b"".join(r.data for r in entry), exists.value

    await gitrepo.seed(channel, repo, source, workdir)
    path = _disk(target, repo)
    old_main = disk(path, "rev-parse", "main").strip().decode()
    assert await answers() == (old_main, disk(path, "show", "main:README.md"), True)
    if target.cluster is None:
        git("update-ref", ghost.decode(), old_main, cwd=path)
        assert (
            await refs_stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=ghost))
        ).value

    await repository_pb2_grpc.RepositoryServiceStub(channel).RemoveRepository(
        repository_pb2.RemoveRepositoryRequest(repository=repo)
    )
    other = gitrepo.make_repo(workdir / "other", commits=2, branches=(), tags=(), annotated_tags=())
    (other / "README.md").write_text("another history\n")
    git("commit", "-q", "-am", "another history", cwd=other)
    await gitrepo.seed(channel, repo, other, workdir)
    path = _disk(target, repo)
    new_main = disk(path, "rev-parse", "main").strip().decode()
    assert new_main != old_main
    assert await answers() == (new_main, b"another history\n", False)
    if target.cluster is None:
        # The same ref to an object this repository does not have: git's
        # answer (an error), not the one kept for the old repository.
        (path / ghost.decode()).write_text(old_main + "\n")
        request = ref_pb2.RefExistsRequest(repository=repo, ref=ghost)
        assert await status_of(refs_stub.RefExists(request)) == grpc.StatusCode.INTERNAL


async def test_tree_entry_tree_and_submodule(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    for request_path in (b"src", b"src/", b"deep/a"):
        (response,) = await collect(
            stub.TreeEntry(
                commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=request_path)
            )
        )
        entry = request_path.rstrip(b"/").decode()
        mode, _kind, oid = _ls(path, "main", entry)
        size = int(disk(path, "cat-file", "-s", oid))
        assert response.type == commit_pb2.TreeEntryResponse.TREE
        assert (response.oid, response.mode, response.size, response.data) == (oid, mode, size, b"")
    (sub,) = await collect(
        stub.TreeEntry(
            commit_pb2.TreeEntryRequest(repository=repo, revision=b"main", path=b"vendor/sub")
        )
    )
    mode, _kind, oid = _ls(path, "main", "vendor/sub")
    assert (sub.type, sub.oid, sub.mode) == (commit_pb2.TreeEntryResponse.COMMIT, oid, 0o160000)


@pytest.mark.parametrize(
    ("revision", "request_path"),
    [
        (b"main", b"nope.txt"),
        (b"main", b"src/nope"),
        (b"nope", b"README.md"),
        (b"main", b"../x"),
        (b"main", b"./README.md"),
    ],
)
async def test_tree_entry_not_found(
    stub: Any, seeded: Seeded, revision: bytes, request_path: bytes
) -> None:
    repo, _ = seeded
    request = commit_pb2.TreeEntryRequest(repository=repo, revision=revision, path=request_path)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(stub.TreeEntry(request))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "tree entry not found" in (err.value.details() or "")


@pytest.mark.parametrize(
    "fields",
    [
        {"revision": b"", "path": b"README.md"},
        {"revision": b"-x", "path": b"README.md"},
        {"revision": b"main", "path": b""},
        {"revision": b"main", "path": b"README.md", "limit": -1},
        {"revision": b"main", "path": b"README.md", "max_size": -1},
    ],
)
async def test_tree_entry_invalid(stub: Any, seeded: Seeded, fields: dict[str, Any]) -> None:
    repo, _ = seeded
    assert (
        await status_of(stub.TreeEntry(commit_pb2.TreeEntryRequest(repository=repo, **fields)))
        == INVALID
    )


# --- GetTreeEntries ------------------------------------------------------------------------------

_KIND = {
    "blob": commit_pb2.TreeEntry.BLOB,
    "tree": commit_pb2.TreeEntry.TREE,
    "commit": commit_pb2.TreeEntry.COMMIT,
}


def ls_tree(
    path: Path, revision: str, sub: str, recursive: bool
) -> list[tuple[bytes, str, int, Any]]:
    """(path, oid, mode, type) as git lists them, paths from the repository root."""
    args = ["ls-tree", "-z", "--full-tree"] + (["-r", "-t"] if recursive else [])
    spec = f"{revision}:{sub}" if sub else revision
    out = disk(path, *args, spec)
    prefix = sub.encode() + b"/" if sub else b""
    rows = []
    for record in out.split(b"\x00"):
        if record:
            meta, name = record.split(b"\t", 1)
            mode, kind, oid = meta.decode().split()
            rows.append((prefix + name, oid, int(mode, 8), _KIND[kind]))
    return rows


def _rows(responses: list[commit_pb2.GetTreeEntriesResponse]) -> list[tuple[bytes, str, int, Any]]:
    return [(e.path, e.oid, e.mode, e.type) for r in responses for e in r.entries]


@pytest.mark.parametrize(
    ("request_path", "sub", "recursive"),
    [
        (b".", "", False),
        (b"src", "src", False),
        (b"deep/a/", "deep/a", False),
        (b".", "", True),
        (b"deep", "deep", True),
    ],
)
async def test_get_tree_entries_matches_ls_tree(
    stub: Any,
    seeded: Seeded,
    request_path: bytes,
    sub: str,
    recursive: bool,
) -> None:
    repo, path = seeded
    responses = await collect(
        stub.GetTreeEntries(
            commit_pb2.GetTreeEntriesRequest(
                repository=repo, revision=b"main", path=request_path, recursive=recursive
            )
        )
    )
    assert _rows(responses) == ls_tree(path, "main", sub, recursive)
    assert all(e.commit_oid == "main" for r in responses for e in r.entries)


async def test_get_tree_entries_flat_paths(stub: Any, seeded: Seeded) -> None:
    repo, _ = seeded
    request = commit_pb2.GetTreeEntriesRequest(repository=repo, revision=b"main", path=b".")
    entries = {
        e.path: e.flat_path for r in await collect(stub.GetTreeEntries(request)) for e in r.entries
    }
    # deep -> a -> b -> c holds two files: the chain collapses to deep/a/b/c.
    assert entries[b"deep"] == b"deep/a/b/c"
    assert entries[b"docs"] == b"docs"
    assert entries[b"src"] == b"src"
    assert entries[b"README.md"] == b"README.md"
    skipped = commit_pb2.GetTreeEntriesRequest(
        repository=repo, revision=b"main", path=b".", skip_flat_paths=True
    )
    assert all(
        not e.flat_path for r in await collect(stub.GetTreeEntries(skipped)) for e in r.entries
    )
    recursive = commit_pb2.GetTreeEntriesRequest(
        repository=repo, revision=b"main", path=b".", recursive=True
    )
    assert all(
        not e.flat_path for r in await collect(stub.GetTreeEntries(recursive)) for e in r.entries
    )


async def test_get_tree_entries_sort_and_pagination(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    expected = ls_tree(path, "main", "", False)
    order: dict[Any, int] = {
        commit_pb2.TreeEntry.TREE: 0,
        commit_pb2.TreeEntry.BLOB: 1,
        commit_pb2.TreeEntry.COMMIT: 2,
    }
    trees_first = sorted(expected, key=lambda row: order[row[3]])
    request = commit_pb2.GetTreeEntriesRequest(
        repository=repo,
        revision=b"main",
        path=b".",
        sort=commit_pb2.GetTreeEntriesRequest.TREES_FIRST,
    )
    assert _rows(await collect(stub.GetTreeEntries(request))) == trees_first
    # Page through two at a time; the cursor is a base64 JSON file name.
    seen: list[tuple[bytes, str, int, Any]] = []
    token = ""
    for _ in range(len(expected) + 1):
        request = commit_pb2.GetTreeEntriesRequest(
            repository=repo,
            revision=b"main",
            path=b".",
            sort=commit_pb2.GetTreeEntriesRequest.TREES_FIRST,
            pagination_params=shared_pb2.PaginationParameter(limit=2, page_token=token),
        )
        responses = await collect(stub.GetTreeEntries(request))
        seen += _rows(responses)
        token = responses[0].pagination_cursor.next_cursor if responses else ""
        if not token:
            break
        assert json.loads(base64.b64decode(token))["file_name"] == seen[-1][0].decode()
    assert seen == trees_first
    # Legacy object-id tokens still work.
    legacy = commit_pb2.GetTreeEntriesRequest(
        repository=repo,
        revision=b"main",
        path=b".",
        pagination_params=shared_pb2.PaginationParameter(limit=100, page_token=expected[0][1]),
    )
    assert _rows(await collect(stub.GetTreeEntries(legacy))) == expected[1:]
    bad = commit_pb2.GetTreeEntriesRequest(
        repository=repo,
        revision=b"main",
        path=b".",
        pagination_params=shared_pb2.PaginationParameter(limit=2, page_token="nope"),
    )
    assert await status_of(stub.GetTreeEntries(bad)) == INVALID


async def test_get_tree_entries_blob_path_is_empty(stub: Any, seeded: Seeded) -> None:
    repo, _ = seeded
    for recursive in (False, True):
        for request_path in (b"README.md", b"vendor/sub"):
            request = commit_pb2.GetTreeEntriesRequest(
                repository=repo, revision=b"main", path=request_path, recursive=recursive
            )
            assert await collect(stub.GetTreeEntries(request)) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"revision": b"main", "path": b""},
        {"revision": b"", "path": b"."},
        {"revision": b"-main", "path": b"."},
        {"revision": b"nope", "path": b"."},
        {"revision": b"main", "path": b"missing"},
        {"revision": b"main", "path": b"missing", "recursive": True},
        {"revision": b"main", "path": b"../x"},
    ],
)
async def test_get_tree_entries_invalid(stub: Any, seeded: Seeded, fields: dict[str, Any]) -> None:
    repo, _ = seeded
    assert (
        await status_of(
            stub.GetTreeEntries(commit_pb2.GetTreeEntriesRequest(repository=repo, **fields))
        )
        == INVALID
    )


# --- addressing and malformed requests -----------------------------------------------------------


def _requests(repo: shared_pb2.Repository) -> Iterator[tuple[str, Any]]:
    yield "FindCommit", commit_pb2.FindCommitRequest(repository=repo, revision=b"HEAD")
    yield "ListCommits", commit_pb2.ListCommitsRequest(repository=repo, revisions=["HEAD"])
    yield (
        "CommitIsAncestor",
        commit_pb2.CommitIsAncestorRequest(repository=repo, ancestor_id="a", child_id="b"),
    )
    yield "CountCommits", commit_pb2.CountCommitsRequest(repository=repo, revision=b"HEAD")
    yield (
        "TreeEntry",
        commit_pb2.TreeEntryRequest(repository=repo, revision=b"HEAD", path=b"README.md"),
    )
    yield (
        "GetTreeEntries",
        commit_pb2.GetTreeEntriesRequest(repository=repo, revision=b"HEAD", path=b"."),
    )


def _bad_addresses(target: Target) -> list[tuple[shared_pb2.Repository, grpc.StatusCode]]:
    storage = target.storage
    return [
        (shared_pb2.Repository(), INVALID),
        (shared_pb2.Repository(storage_name="no-such-storage", relative_path="x.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="/etc/x.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="../escape.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="a/../../escape.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="nul\x00byte.git"), INVALID),
        (target.repository(), grpc.StatusCode.NOT_FOUND),
    ]


async def test_bad_addresses(stub: Any, target: Target) -> None:
    for repo, code in _bad_addresses(target):
        for method, request in _requests(repo):
            assert await status_of(getattr(stub, method)(request)) == code, (method, repo)


async def test_symlink_escaping_the_storage(stub: Any, target: Target, workdir: Path) -> None:
    if target.storage_path is None:
        pytest.skip("needs the storage's disk")
    outside = workdir / "outside.git"
    git("init", "-q", "--bare", str(outside))
    link = target.storage_path / f"escape-{uuid.uuid4().hex}.git"
    link.symlink_to(outside)
    try:
        repo = shared_pb2.Repository(storage_name=target.storage, relative_path=link.name)
        for method, request in _requests(repo):
            assert await status_of(getattr(stub, method)(request)) == INVALID, method
    finally:
        link.unlink()


async def test_malformed_requests(channel: grpc.aio.Channel) -> None:
    garbage = b"\xff\xff\xff\xff"
    for method, _request in _requests(shared_pb2.Repository()):
        path = f"/gitaly.CommitService/{method}"
        if method in ("FindCommit", "CommitIsAncestor", "CountCommits"):
            call: Any = channel.unary_unary(path)(garbage)
        else:
            call = channel.unary_stream(path)(garbage)
        assert await status_of(call) == INVALID, method
