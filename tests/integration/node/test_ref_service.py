"""RefService on a real node, checked against the git CLI run on the replica's disk."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gitaly import (
    commit_pb2,
    commit_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    shared_pb2,
    transaction_pb2,
    transaction_pb2_grpc,
)
from gitquorum.storage.refs import valid_refname
from gitquorum.wire.transaction_metadata import Transaction, encode_metadata
from tests.conftest import THROUGH_PROXY, Target
from tests.harness import gitrepo
from tests.harness.gitrepo import git

ZERO = "0" * 40
INVALID = grpc.StatusCode.INVALID_ARGUMENT
Seeded = tuple[shared_pb2.Repository, Path]


def build_source(path: Path) -> Path:
    src = gitrepo.make_repo(
        path,
        commits=3,
        branches=("feature", "dev", "master"),
        tags=("v1.0",),
        annotated_tags=("v1.1",),
    )
    # Branches with distinct committer dates, for the date sorts.
    for name, stamp in (("late", "@1800000000 +0000"), ("early", "@1500000000 -0500")):
        git("checkout", "-q", "-b", name, "main", cwd=src)
        git(
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            f"{name} commit",
            cwd=src,
            env={"GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_DATE": stamp},
        )
        git("tag", "-a", f"t-{name}", "-m", name, cwd=src, env={"GIT_COMMITTER_DATE": stamp})
    git("checkout", "-q", "main", cwd=src)
    return src


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_source(tmp_path_factory.mktemp("ref-service") / "src")


# Read-only tests share one repository per target, seeded through the target itself.
_SEEDED: dict[str, Seeded] = {}


def _disk(target: Target, repo: shared_pb2.Repository) -> Path:
    # Differential checks read the replica's disk: through a proxy, the primary's replica.
    return target.disk_path(repo)


@pytest.fixture
async def seeded(channel: grpc.aio.Channel, target: Target, source: Path, workdir: Path) -> Seeded:
    if target.address not in _SEEDED:
        repo = target.repository(f"ref/{uuid.uuid4().hex}.git")
        await gitrepo.seed(channel, repo, source, workdir)
        _SEEDED[target.address] = (repo, _disk(target, repo))
    return _SEEDED[target.address]


@pytest.fixture
async def fresh(channel: grpc.aio.Channel, target: Target, source: Path, workdir: Path) -> Seeded:
    """A repository of its own for a test that changes refs."""
    repo = target.repository()
    await gitrepo.seed(channel, repo, source, workdir)
    return repo, _disk(target, repo)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> ref_pb2_grpc.RefServiceStub:
    return ref_pb2_grpc.RefServiceStub(channel)


def disk(path: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=path, capture_output=True, check=True).stdout


def disk_rc(path: Path, *args: str) -> int:
    return subprocess.run(["git", *args], cwd=path, capture_output=True).returncode


def for_each_ref(path: Path, *args: str) -> list[list[str]]:
    out = disk(path, "for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)", *args)
    return [line.split("\x00") for line in out.decode().splitlines()]


async def collect(call: Any) -> list[Any]:
    return [message async for message in call]


async def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            await collect(call)
        else:
            await call
    return err.value.code()


def updates_stream(
    repo: shared_pb2.Repository | None, *batches: list[tuple[str, str, str]]
) -> AsyncIterator[ref_pb2.UpdateReferencesRequest]:
    async def gen() -> AsyncIterator[ref_pb2.UpdateReferencesRequest]:
        for index, batch in enumerate(batches):
            request = ref_pb2.UpdateReferencesRequest(
                updates=[
                    ref_pb2.UpdateReferencesRequest.Update(
                        reference=ref.encode(),
                        old_object_id=old.encode(),
                        new_object_id=new.encode(),
                    )
                    for ref, old, new in batch
                ]
            )
            if index == 0 and repo is not None:
                request.repository.CopyFrom(repo)
            yield request

    return gen()


# --- names ---------------------------------------------------------------------------------------

REFNAMES = [
    "refs/heads/main",
    "refs/heads/a/b",
    "refs/tags/v1.0",
    "refs/heads/a..b",
    "refs/heads/.hidden",
    "refs/heads/x.lock",
    "refs/heads/x/",
    "refs//heads",
    "refs/heads/a b",
    "refs/heads/a~1",
    "refs/heads/a^",
    "refs/heads/a:b",
    "refs/heads/a?",
    "refs/heads/a*",
    "refs/heads/a[",
    "refs/heads/a\\b",
    "refs/heads/a@{1}",
    "refs/heads/@",
    "@",
    "HEAD",
    "main",
    "refs/heads/end.",
    "/refs/heads/x",
    "refs/heads/a\tb",
    "refs/heads/\u00e9t\u00e9",
    "refs/heads/-dash",
    "refs/heads/a.b",
    "refs/heads/a/.b",
]


@pytest.mark.parametrize("name", REFNAMES)
def test_valid_refname_agrees_with_check_ref_format(name: str) -> None:
    expected = (
        subprocess.run(["git", "check-ref-format", name], capture_output=True).returncode == 0
    )
    assert valid_refname(name.encode()) is expected


# --- FindDefaultBranchName -----------------------------------------------------------------------


async def test_find_default_branch_name(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    head = disk(path, "symbolic-ref", "HEAD").strip()
    for head_only in (False, True):
        response = await stub.FindDefaultBranchName(
            ref_pb2.FindDefaultBranchNameRequest(repository=repo, head_only=head_only)
        )
        assert response.name == head == b"refs/heads/main"


async def test_find_default_branch_name_fallbacks(stub: Any, fresh: Seeded) -> None:
    repo, _ = fresh

    async def default(head_only: bool = False) -> bytes:
        request = ref_pb2.FindDefaultBranchNameRequest(repository=repo, head_only=head_only)
        return bytes((await stub.FindDefaultBranchName(request)).name)

    async def delete(*names: str) -> None:
        await stub.DeleteRefs(
            ref_pb2.DeleteRefsRequest(repository=repo, refs=[n.encode() for n in names])
        )

    # HEAD keeps pointing at main after main is gone: main -> master -> first branch.
    await delete("refs/heads/main")
    assert await default() == b"refs/heads/master"
    assert await default(head_only=True) == b"refs/heads/main"
    await delete("refs/heads/master")
    assert await default() == b"refs/heads/dev"
    await delete("refs/heads/dev", "refs/heads/early", "refs/heads/late")
    assert await default() == b"refs/heads/feature"
    await stub.DeleteRefs(
        ref_pb2.DeleteRefsRequest(repository=repo, except_with_prefix=[b"refs/nothing/"])
    )
    assert await default() == b""
    assert await default(head_only=True) == b"refs/heads/main"


# --- FindLocalBranches ---------------------------------------------------------------------------

SORTS: dict[Any, str] = {
    ref_pb2.FindLocalBranchesRequest.NAME: "refname",
    ref_pb2.FindLocalBranchesRequest.UPDATED_ASC: "committerdate",
    ref_pb2.FindLocalBranchesRequest.UPDATED_DESC: "-committerdate",
}


@pytest.mark.parametrize("sort_by", list(SORTS))
async def test_find_local_branches_matches_git(stub: Any, seeded: Seeded, sort_by: Any) -> None:
    repo, path = seeded
    responses = await collect(
        stub.FindLocalBranches(ref_pb2.FindLocalBranchesRequest(repository=repo, sort_by=sort_by))
    )
    branches = [b for r in responses for b in r.local_branches]
    expected = for_each_ref(path, f"--sort={SORTS[sort_by]}", "refs/heads/")
    assert [(b.name.decode(), b.target_commit.id) for b in branches] == [
        (n, o) for n, o, _ in expected
    ]
    fmt = "%(objectname)%00%(subject)%00%(committerdate:unix)%00%(authoremail:trim)"
    for branch in branches:
        oid, subject, date, email = (
            disk(path, "for-each-ref", f"--format={fmt}", branch.name.decode())
            .decode()
            .strip()
            .split("\x00")
        )
        commit = branch.target_commit
        assert (commit.id, commit.subject.decode(), commit.committer.date.seconds) == (
            oid,
            subject,
            int(date),
        )
        assert commit.author.email.decode() == email and commit.tree_id


async def test_find_local_branches_pagination(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    names = [n for n, _, _ in for_each_ref(path, "refs/heads/")]

    async def page(limit: int, token: str = "") -> list[str]:
        request = ref_pb2.FindLocalBranchesRequest(
            repository=repo,
            pagination_params=shared_pb2.PaginationParameter(limit=limit, page_token=token),
        )
        return [
            b.name.decode()
            for r in await collect(stub.FindLocalBranches(request))
            for b in r.local_branches
        ]

    seen: list[str] = []
    token = ""
    while batch := await page(2, token):
        assert len(batch) <= 2
        seen += batch
        token = batch[-1]
    assert seen == names
    assert await page(-1, names[1]) == names[2:]
    assert await page(0) == []
    for limit, token in ((2, "refs/heads/nope"), (0, names[0])):
        request = ref_pb2.FindLocalBranchesRequest(
            repository=repo,
            pagination_params=shared_pb2.PaginationParameter(limit=limit, page_token=token),
        )
        assert await status_of(stub.FindLocalBranches(request)) == INVALID


async def test_many_branches_and_refs_span_messages(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    head = disk(path, "rev-parse", "HEAD").decode().strip()
    created = [(f"refs/heads/bulk/{i:04d}", "", head) for i in range(1100)]
    await stub.UpdateReferences(updates_stream(repo, created[:600], created[600:]))
    branches = await collect(
        stub.FindLocalBranches(ref_pb2.FindLocalBranchesRequest(repository=repo))
    )
    assert len(branches) > 1
    assert [b.name.decode() for r in branches for b in r.local_branches] == [
        n for n, _, _ in for_each_ref(path, "refs/heads/")
    ]
    listed = await collect(stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo)))
    assert len(listed) > 1
    assert [(r.name.decode(), r.target) for m in listed for r in m.references] == [
        (n, o) for n, o, _ in for_each_ref(path, "refs/")
    ]


# --- FindBranch and RefExists --------------------------------------------------------------------


async def test_find_branch(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    oid = disk(path, "rev-parse", "refs/heads/feature").decode().strip()
    for name in (b"feature", b"refs/heads/feature"):
        response = await stub.FindBranch(ref_pb2.FindBranchRequest(repository=repo, name=name))
        assert response.branch.name == b"feature"
        assert response.branch.target_commit.id == oid
        assert response.branch.target_commit.subject == b"commit 1"
    for unknown in (b"nope", b"refs/heads/nope", b"a..b", b"v1.0"):
        response = await stub.FindBranch(ref_pb2.FindBranchRequest(repository=repo, name=unknown))
        assert not response.HasField("branch"), unknown
    assert (
        await status_of(stub.FindBranch(ref_pb2.FindBranchRequest(repository=repo, name=b"")))
        == INVALID
    )


async def test_ref_exists(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    for ref in (
        b"refs/heads/main",
        b"refs/tags/v1.1",
        b"refs/heads/nope",
        b"refs/heads",
        b"refs/heads/a..b",
    ):
        expected = disk_rc(path, "show-ref", "--verify", "--quiet", ref.decode()) == 0
        response = await stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=ref))
        assert response.value is expected, ref
    for ref in (b"", b"HEAD", b"heads/main", b"main", b"\x00refs/heads/main"):
        assert (
            await status_of(stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=ref)))
            == INVALID
        )


async def test_ref_exists_in_a_reftable_repository_is_gits_answer(stub: Any, fresh: Seeded) -> None:
    """In a reftable repository ``refs/heads`` is a file and no loose ref exists:
    that says nothing about the refs, so git answers, not the files."""
    if THROUGH_PROXY:
        pytest.skip("changes one replica's files directly")
    repo, path = fresh
    ref = b"refs/heads/main"
    request = ref_pb2.RefExistsRequest(repository=repo, ref=ref)
    assert (await stub.RefExists(request)).value is True
    # The layout of a reftable repository (the refs themselves live in reftable/).
    disk(path, "config", "core.repositoryformatversion", "1")
    disk(path, "config", "extensions.refStorage", "reftable")
    shutil.rmtree(path / "refs" / "heads")
    (path / "refs" / "heads").write_bytes(b"this repository uses the reftable format\n")
    (path / "packed-refs").unlink(missing_ok=True)
    (path / "reftable").mkdir()
    (path / "reftable" / "tables.list").write_bytes(b"")
    rc = disk_rc(path, "show-ref", "--verify", "--quiet", ref.decode())
    if rc in (0, 1):
        assert (await stub.RefExists(request)).value is (rc == 0)
    else:
        # A git that cannot read the repository: an error, never "no such ref".
        assert await status_of(stub.RefExists(request)) == grpc.StatusCode.INTERNAL


async def test_ref_exists_with_a_large_packed_refs_is_gits_answer(stub: Any, fresh: Seeded) -> None:
    """A packed-refs too large to parse on the node is left to git: same answers."""
    if THROUGH_PROXY:
        pytest.skip("changes one replica's files directly")
    repo, path = fresh
    disk(path, "pack-refs", "--all")
    main = disk(path, "rev-parse", "refs/heads/main").strip().decode()
    many = "".join(f"{main} refs/heads/many/{i:06}\n" for i in range(25_000))
    (path / "packed-refs").write_text((path / "packed-refs").read_text() + many)
    assert (path / "packed-refs").stat().st_size > 1024 * 1024
    for ref in (b"refs/heads/many/024999", b"refs/heads/main", b"refs/heads/many/nope"):
        expected = disk_rc(path, "show-ref", "--verify", "--quiet", ref.decode()) == 0
        response = await stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=ref))
        assert response.value is expected, ref


async def test_ref_exists_follows_the_refs_as_they_change(stub: Any, fresh: Seeded) -> None:
    """RefExists reads refs from the files (packed-refs kept parsed): every
    change between two calls shows, and what git alone reads is git's answer."""
    if THROUGH_PROXY:
        pytest.skip("changes one replica's files directly")
    repo, path = fresh

    async def exists(ref: bytes) -> bool:
        return bool(
            (await stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=ref))).value
        )

    def git_says(ref: bytes) -> bool:
        return disk_rc(path, "show-ref", "--verify", "--quiet", ref.decode()) == 0

    main = disk(path, "rev-parse", "refs/heads/main").strip().decode()
    new = b"refs/heads/new"
    assert await exists(new) is False
    disk(path, "update-ref", new.decode(), main)
    assert await exists(new) is True
    disk(path, "pack-refs", "--all")
    assert not (path / new.decode()).exists()
    assert await exists(new) is True
    disk(path, "update-ref", "-d", new.decode())
    assert await exists(new) is False
    disk(path, "update-ref", new.decode(), main)
    disk(path, "pack-refs", "--all")
    assert await exists(new) is True
    # Symbolic refs, whole or dangling: what show-ref says.
    disk(path, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    disk(path, "symbolic-ref", "refs/heads/dangling", "refs/heads/nowhere")
    assert await exists(b"refs/heads/alias") is git_says(b"refs/heads/alias") is True
    assert await exists(b"refs/heads/dangling") is git_says(b"refs/heads/dangling") is False
    # A ref to an object that is not there: show-ref fails, and so does the call.
    (path / "refs" / "heads" / "broken").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert disk_rc(path, "show-ref", "--verify", "--quiet", "refs/heads/broken") not in (0, 1)
    assert (
        await status_of(
            stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/broken"))
        )
        == grpc.StatusCode.INTERNAL
    )


async def test_reads_follow_a_ref_updated_between_two_calls(
    stub: Any, fresh: Seeded, channel: grpc.aio.Channel
) -> None:
    """The node's long-lived readers (cat-file, the parsed packed-refs, answers
    kept per object) see a ref move at once: FindCommit, TreeEntry, RefExists
    and FindLocalBranches answer anew."""
    repo, path = fresh
    commits = commit_pb2_grpc.CommitServiceStub(channel)
    main = disk(path, "rev-parse", "refs/heads/main").strip().decode()
    parent = disk(path, "rev-parse", "refs/heads/main~1").strip().decode()

    async def find(revision: bytes) -> str:
        request = commit_pb2.FindCommitRequest(repository=repo, revision=revision)
        return str((await commits.FindCommit(request)).commit.id)

    async def branch_target(name: bytes) -> str:
        request = ref_pb2.FindLocalBranchesRequest(repository=repo)
        for response in await collect(stub.FindLocalBranches(request)):
            for branch in response.local_branches:
                if branch.name == name:
                    return str(branch.target_commit.id)
        return ""

    async def readme(revision: bytes) -> bytes:
        request = commit_pb2.TreeEntryRequest(repository=repo, revision=revision, path=b"README.md")
        return b"".join(r.data for r in await collect(commits.TreeEntry(request)))

    def readme_at(commit: str) -> bytes:
        return disk(path, "cat-file", "blob", f"{commit}:README.md")

    assert readme_at(main) != readme_at(parent)
    assert await find(b"main") == await branch_target(b"refs/heads/main") == main
    assert await readme(b"main") == readme_at(main)
    await stub.UpdateReferences(updates_stream(repo, [("refs/heads/main", main, parent)]))
    assert await find(b"main") == await branch_target(b"refs/heads/main") == parent
    assert await readme(b"main") == readme_at(parent)
    request = ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/later")
    assert not (await stub.RefExists(request)).value
    await stub.UpdateReferences(updates_stream(repo, [("refs/heads/later", ZERO, main)]))
    assert (await stub.RefExists(request)).value
    assert await find(b"later") == main
    await stub.DeleteRefs(ref_pb2.DeleteRefsRequest(repository=repo, refs=[b"refs/heads/later"]))
    assert not (await stub.RefExists(request)).value
    assert await find(b"later") == ""


async def test_default_branch_follows_head_and_its_branch(stub: Any, fresh: Seeded) -> None:
    """HEAD's branch, read from the files, is the answer while it exists, however
    it is stored; otherwise the branch listing decides, as before."""
    if THROUGH_PROXY:
        pytest.skip("changes one replica's files directly")
    repo, path = fresh

    async def default() -> bytes:
        request = ref_pb2.FindDefaultBranchNameRequest(repository=repo)
        return bytes((await stub.FindDefaultBranchName(request)).name)

    assert await default() == b"refs/heads/main"
    disk(path, "symbolic-ref", "HEAD", "refs/heads/dev")
    assert await default() == b"refs/heads/dev"
    disk(path, "pack-refs", "--all")
    assert await default() == b"refs/heads/dev"
    main = disk(path, "rev-parse", "refs/heads/main").strip().decode()
    disk(path, "update-ref", "-d", "refs/heads/dev")
    assert await default() == b"refs/heads/main"
    disk(path, "update-ref", "refs/heads/dev", main)
    assert await default() == b"refs/heads/dev"
    # HEAD's branch pointing at no object: for-each-ref lists its name all the same.
    (path / "refs" / "heads" / "dev").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert (
        disk(path, "for-each-ref", "--format=%(refname)", "refs/heads/dev") == b"refs/heads/dev\n"
    )
    assert await default() == b"refs/heads/dev"
    # HEAD's branch holding what git calls broken: skipped by the listing, so main.
    (path / "refs" / "heads" / "dev").write_text("not an object id\n")
    assert await default() == b"refs/heads/main"
    # HEAD's branch a symbolic ref: listed by for-each-ref, so HEAD's.
    disk(path, "symbolic-ref", "refs/heads/dev", "refs/heads/feature")
    assert await default() == b"refs/heads/dev"


# --- ListRefs ------------------------------------------------------------------------------------


def _refs(responses: list[ref_pb2.ListRefsResponse]) -> list[tuple[str, str, str]]:
    return [(r.name.decode(), r.target, r.peeled_target) for m in responses for r in m.references]


async def test_list_refs_matches_for_each_ref(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    everything = await collect(stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo)))
    assert _refs(everything) == [(n, o, "") for n, o, _ in for_each_ref(path, "refs/")]
    peeled = await collect(
        stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo, peel_tags=True, head=True))
    )
    head = disk(path, "rev-parse", "HEAD").decode().strip()
    assert _refs(peeled) == [("HEAD", head, "")] + [
        tuple(row) for row in for_each_ref(path, "refs/")
    ]
    tags = dict((n, (o, p)) for n, o, p in _refs(peeled))
    assert tags["refs/tags/v1.1"][1] == disk(path, "rev-parse", "v1.1^{commit}").decode().strip()
    assert tags["refs/tags/v1.0"][1] == ""
    only_tags = await collect(
        stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo, patterns=[b"refs/tags/"]))
    )
    assert _refs(only_tags) == [(n, o, "") for n, o, _ in for_each_ref(path, "refs/tags/")]
    several = await collect(
        stub.ListRefs(
            ref_pb2.ListRefsRequest(
                repository=repo, patterns=[b"refs/heads/ma*", b"refs/tags/v1.1"]
            )
        )
    )
    assert _refs(several) == [
        (n, o, "") for n, o, _ in for_each_ref(path, "refs/heads/ma*", "refs/tags/v1.1")
    ]


async def test_list_refs_pointing_at_and_sorting(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    late = disk(path, "rev-parse", "late").decode().strip()
    feature = disk(path, "rev-parse", "feature").decode().strip()
    pointing = await collect(
        stub.ListRefs(
            ref_pb2.ListRefsRequest(
                repository=repo, pointing_at_oids=[late.encode(), feature.encode()]
            )
        )
    )
    expected = for_each_ref(path, f"--points-at={late}", f"--points-at={feature}", "refs/")
    assert _refs(pointing) == [(n, o, "") for n, o, _ in expected]
    assert {n for n, _, _ in _refs(pointing)} >= {
        "refs/heads/late",
        "refs/tags/t-late",
        "refs/heads/feature",
    }
    keys: Any = ref_pb2.ListRefsRequest.SortBy
    for key, name in (
        (keys.REFNAME, "refname"),
        (keys.CREATORDATE, "creatordate"),
        (keys.AUTHORDATE, "authordate"),
        (keys.COMMITTERDATE, "committerdate"),
    ):
        for direction, prefix in ((shared_pb2.ASCENDING, ""), (shared_pb2.DESCENDING, "-")):
            request = ref_pb2.ListRefsRequest(
                repository=repo, sort_by=keys(key=key, direction=direction)
            )
            got = _refs(await collect(stub.ListRefs(request)))
            assert got == [
                (n, o, "") for n, o, _ in for_each_ref(path, f"--sort={prefix}{name}", "refs/")
            ]


async def test_list_refs_pagination(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    names = [n for n, _, _ in for_each_ref(path, "refs/")]
    seen: list[str] = []
    token = ""
    for _ in range(len(names) + 1):
        request = ref_pb2.ListRefsRequest(
            repository=repo,
            pagination_params=shared_pb2.PaginationParameter(limit=3, page_token=token),
        )
        responses = await collect(stub.ListRefs(request))
        page = [n for n, _, _ in _refs(responses)]
        seen += page
        token = responses[0].pagination_cursor.next_cursor if responses else ""
        if not token:
            break
        assert token == page[-1]
    assert seen == names
    for limit, token in ((3, "refs/heads/nope"), (0, names[0])):
        request = ref_pb2.ListRefsRequest(
            repository=repo,
            pagination_params=shared_pb2.PaginationParameter(limit=limit, page_token=token),
        )
        assert await status_of(stub.ListRefs(request)) == INVALID


@pytest.mark.parametrize(
    "fields",
    [
        # Enum values this server does not know (proto3 enums are open).
        {"sort_by": ref_pb2.ListRefsRequest.SortBy(key=42)},  # type: ignore[arg-type]
        {"sort_by": ref_pb2.ListRefsRequest.SortBy(direction=7)},  # type: ignore[arg-type]
        {"pointing_at_oids": [b"not-an-object"]},
        {"pointing_at_oids": [b"--all"]},
        {"patterns": [b"--sort=foo"]},
    ],
)
async def test_list_refs_invalid(stub: Any, seeded: Seeded, fields: dict[str, Any]) -> None:
    repo, _ = seeded
    assert (
        await status_of(stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo, **fields)))
        == INVALID
    )


# --- UpdateReferences ----------------------------------------------------------------------------


def refs_on(path: Path) -> dict[str, str]:
    return gitrepo.refs(path)


async def test_update_references_applies_all_messages(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    head, feature = before["refs/heads/main"], before["refs/heads/feature"]
    await stub.UpdateReferences(
        updates_stream(
            repo,
            [("refs/heads/created", "", head), ("refs/heads/feature", feature, head)],
            [("refs/heads/dev", "", ZERO), ("refs/keep-around/x", ZERO, feature)],
        )
    )
    after = refs_on(path)
    expected = dict(before)
    expected.update(
        {"refs/heads/created": head, "refs/heads/feature": head, "refs/keep-around/x": feature}
    )
    del expected["refs/heads/dev"]
    assert after == expected


async def test_update_references_is_atomic(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    head, feature = before["refs/heads/main"], before["refs/heads/feature"]
    stale = [("refs/heads/new", "", head), ("refs/heads/feature", head, feature)]
    assert (
        await status_of(stub.UpdateReferences(updates_stream(repo, stale)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    exists = [("refs/heads/main", ZERO, feature)]
    assert (
        await status_of(stub.UpdateReferences(updates_stream(repo, exists)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    missing_object = [("refs/heads/ghost", "", "1" * 40)]
    assert (
        await status_of(stub.UpdateReferences(updates_stream(repo, missing_object)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert refs_on(path) == before


@pytest.mark.parametrize(
    "batches",
    [
        [[("refs/heads/a..b", "", "HEAD")]],
        [[("HEAD", "", "1" * 40)]],
        [[("main", "", "1" * 40)]],
        [[("refs/heads/x.lock", "", "1" * 40)]],
        [[("refs/heads/ok", "", "xyz")]],
        [[("refs/heads/ok", "", "1" * 39)]],
        [[("refs/heads/ok", "nothex", "1" * 40)]],
        [[("refs/heads/ok", "", "")]],
        [[("refs/heads/ok", "", "1" * 40), ("refs/heads/ok", "", "2" * 40)]],
        [[]],
        [[("refs/heads/ok", "", "1" * 40)], []],
    ],
)
async def test_update_references_invalid(
    stub: Any, fresh: Seeded, batches: list[list[tuple[str, str, str]]]
) -> None:
    repo, path = fresh
    before = refs_on(path)
    head = before["refs/heads/main"]
    resolved = [[(r, o, head if n == "HEAD" else n) for r, o, n in batch] for batch in batches]
    assert await status_of(stub.UpdateReferences(updates_stream(repo, *resolved))) == INVALID
    assert refs_on(path) == before


async def test_update_references_stream_shape(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    head = before["refs/heads/main"]

    async def repeated_repository() -> AsyncIterator[ref_pb2.UpdateReferencesRequest]:
        for _ in range(2):
            yield ref_pb2.UpdateReferencesRequest(
                repository=repo,
                updates=[
                    ref_pb2.UpdateReferencesRequest.Update(
                        reference=b"refs/heads/z", new_object_id=head.encode()
                    )
                ],
            )

    async def nothing() -> AsyncIterator[ref_pb2.UpdateReferencesRequest]:
        return
        yield

    assert await status_of(stub.UpdateReferences(repeated_repository())) == INVALID
    assert await status_of(stub.UpdateReferences(nothing())) == INVALID
    assert refs_on(path) == before


class Voter(transaction_pb2_grpc.RefTransactionServicer):
    """Stands in for the proxy: records votes and answers with ``state``."""

    def __init__(self, state: int) -> None:
        self.state = state
        self.votes: list[tuple[int, int, bytes]] = []

    async def VoteTransaction(
        self, request: transaction_pb2.VoteTransactionRequest, context: grpc.aio.ServicerContext
    ) -> transaction_pb2.VoteTransactionResponse:
        self.votes.append((request.transaction_id, request.phase, request.reference_updates_hash))
        return transaction_pb2.VoteTransactionResponse(state=self.state)  # type: ignore[arg-type]


async def _voter(state: int) -> tuple[grpc.aio.Server, Voter, str]:
    if THROUGH_PROXY:
        pytest.skip("sends its own transaction metadata: the proxy runs its own transaction")
    server = grpc.aio.server()
    voter = Voter(state)
    transaction_pb2_grpc.add_RefTransactionServicer_to_server(voter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, voter, f"127.0.0.1:{port}"


async def test_update_references_votes_in_a_transaction(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    head = before["refs/heads/main"]
    phases = transaction_pb2.VoteTransactionRequest
    server, voter, address = await _voter(transaction_pb2.VoteTransactionResponse.COMMIT)
    try:
        metadata = encode_metadata(Transaction(7, "node-a", True, address))
        await stub.UpdateReferences(
            updates_stream(repo, [("refs/heads/voted", "", head)]), metadata=metadata
        )
        vote = hashlib.sha1(f"{ZERO} {head} refs/heads/voted\n".encode()).digest()
        assert voter.votes == [(7, phases.PREPARED_PHASE, vote), (7, phases.COMMITTED_PHASE, vote)]
        assert refs_on(path)["refs/heads/voted"] == head
        voter.state = transaction_pb2.VoteTransactionResponse.ABORT
        voter.votes.clear()
        code = await status_of(
            stub.UpdateReferences(
                updates_stream(repo, [("refs/heads/refused", "", head)]), metadata=metadata
            )
        )
        assert code == grpc.StatusCode.ABORTED
        assert [phase for _, phase, _ in voter.votes] == [phases.PREPARED_PHASE]
        assert "refs/heads/refused" not in refs_on(path)
    finally:
        await server.stop(None)


# --- DeleteRefs ----------------------------------------------------------------------------------


async def test_delete_refs_by_name(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    response = await stub.DeleteRefs(
        ref_pb2.DeleteRefsRequest(
            repository=repo,
            refs=[
                b"refs/heads/feature",
                b"refs/tags/v1.1",
                b"refs/heads/nope",
                b"refs/heads/feature",
            ],
        )
    )
    assert response.git_error == ""
    expected = {
        k: v for k, v in before.items() if k not in ("refs/heads/feature", "refs/tags/v1.1")
    }
    assert refs_on(path) == expected


async def test_delete_refs_except_with_prefix(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    response = await stub.DeleteRefs(
        ref_pb2.DeleteRefsRequest(
            repository=repo, except_with_prefix=[b"refs/tags/", b"refs/heads/ma"]
        )
    )
    assert response.git_error == ""
    assert refs_on(path) == {
        k: v for k, v in before.items() if k.startswith(("refs/tags/", "refs/heads/ma"))
    }


async def test_delete_refs_votes_in_a_transaction(stub: Any, fresh: Seeded) -> None:
    repo, path = fresh
    before = refs_on(path)
    server, voter, address = await _voter(transaction_pb2.VoteTransactionResponse.COMMIT)
    try:
        metadata = encode_metadata(Transaction(3, "node-b", False, address))
        await stub.DeleteRefs(
            ref_pb2.DeleteRefsRequest(repository=repo, refs=[b"refs/heads/dev"]), metadata=metadata
        )
        assert [phase for _, phase, _ in voter.votes] == [1, 2]
        assert "refs/heads/dev" not in refs_on(path)
        voter.votes.clear()
        # Nothing to delete still votes, so replicas cast matching votes.
        await stub.DeleteRefs(
            ref_pb2.DeleteRefsRequest(repository=repo, refs=[b"refs/heads/dev"]), metadata=metadata
        )
        assert [phase for _, phase, _ in voter.votes] == [1, 2]
        voter.state = transaction_pb2.VoteTransactionResponse.ABORT
        code = await status_of(
            stub.DeleteRefs(
                ref_pb2.DeleteRefsRequest(repository=repo, refs=[b"refs/heads/main"]),
                metadata=metadata,
            )
        )
        assert code == grpc.StatusCode.ABORTED
        assert refs_on(path)["refs/heads/main"] == before["refs/heads/main"]
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"refs": [b"refs/heads/feature"], "except_with_prefix": [b"refs/tags/"]},
        {"refs": [b""]},
        {"except_with_prefix": [b""]},
        {"refs": [b"refs/heads/a..b"]},
        {"refs": [b"HEAD"]},
    ],
)
async def test_delete_refs_invalid(stub: Any, fresh: Seeded, fields: dict[str, Any]) -> None:
    repo, path = fresh
    before = refs_on(path)
    assert (
        await status_of(stub.DeleteRefs(ref_pb2.DeleteRefsRequest(repository=repo, **fields)))
        == INVALID
    )
    assert refs_on(path) == before


# --- addressing and malformed requests -----------------------------------------------------------


def _calls(stub: Any, repo: shared_pb2.Repository) -> list[tuple[str, Any]]:
    return [
        (
            "FindDefaultBranchName",
            stub.FindDefaultBranchName(ref_pb2.FindDefaultBranchNameRequest(repository=repo)),
        ),
        (
            "FindLocalBranches",
            stub.FindLocalBranches(ref_pb2.FindLocalBranchesRequest(repository=repo)),
        ),
        (
            "RefExists",
            stub.RefExists(ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/main")),
        ),
        ("FindBranch", stub.FindBranch(ref_pb2.FindBranchRequest(repository=repo, name=b"main"))),
        (
            "UpdateReferences",
            stub.UpdateReferences(updates_stream(repo, [("refs/heads/x", "", "1" * 40)])),
        ),
        (
            "DeleteRefs",
            stub.DeleteRefs(ref_pb2.DeleteRefsRequest(repository=repo, refs=[b"refs/heads/x"])),
        ),
        ("ListRefs", stub.ListRefs(ref_pb2.ListRefsRequest(repository=repo))),
    ]


async def test_bad_addresses(stub: Any, target: Target) -> None:
    storage = target.storage
    cases = [
        (shared_pb2.Repository(), INVALID),
        (shared_pb2.Repository(storage_name="no-such-storage", relative_path="x.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="/etc/x.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="../escape.git"), INVALID),
        (shared_pb2.Repository(storage_name=storage, relative_path="nul\x00byte.git"), INVALID),
        (target.repository(), grpc.StatusCode.NOT_FOUND),
    ]
    for repo, code in cases:
        for method, call in _calls(stub, repo):
            assert await status_of(call) == code, (method, repo)


async def test_symlink_escaping_the_storage(stub: Any, target: Target, workdir: Path) -> None:
    if target.storage_path is None:
        pytest.skip("needs the storage's disk")
    outside = workdir / "outside.git"
    git("init", "-q", "--bare", str(outside))
    link = target.storage_path / f"escape-{uuid.uuid4().hex}.git"
    link.symlink_to(outside)
    try:
        repo = shared_pb2.Repository(storage_name=target.storage, relative_path=link.name)
        for method, call in _calls(stub, repo):
            assert await status_of(call) == INVALID, method
    finally:
        link.unlink()


async def test_malformed_requests(channel: grpc.aio.Channel) -> None:
    garbage = b"\xff\xff\xff\xff"
    unary = ("FindDefaultBranchName", "RefExists", "FindBranch", "DeleteRefs")
    for method in unary:
        assert (
            await status_of(channel.unary_unary(f"/gitaly.RefService/{method}")(garbage)) == INVALID
        ), method
    for method in ("FindLocalBranches", "ListRefs"):
        assert (
            await status_of(channel.unary_stream(f"/gitaly.RefService/{method}")(garbage))
            == INVALID
        ), method

    async def requests() -> AsyncIterator[bytes]:
        yield garbage

    call = channel.stream_unary("/gitaly.RefService/UpdateReferences")(requests())
    assert await status_of(call) == INVALID
