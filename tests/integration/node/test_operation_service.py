"""OperationService on a real node: branches, tags and commits of files.

Outcomes are checked against the git CLI run on the repository on disk
(``git for-each-ref``, ``git cat-file``, ``git ls-tree``); error cases check
the status code and that no reference moved.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from gitquorum.gitaly import (
    operations_pb2,
    operations_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.conftest import THROUGH_PROXY, Target
from tests.harness import gitrepo

ZERO = "0" * 40
USER = shared_pb2.User(gl_id="user-1", name=b"Jane Doe", email=b"jane@example.com")
Action = operations_pb2.UserCommitFilesActionHeader
Code = grpc.StatusCode


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main (3 commits), feature (at main~1), light tag v1.0 and annotated v1.1."""
    return gitrepo.make_repo(tmp_path_factory.mktemp("ops-template") / "work", commits=3)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> operations_pb2_grpc.OperationServiceStub:
    return operations_pb2_grpc.OperationServiceStub(channel)


@pytest.fixture
async def repo(
    channel: grpc.aio.Channel, target: Target, template: Path, tmp_path: Path
) -> shared_pb2.Repository:
    """A fresh copy of the template on the target."""
    repository = target.repository()
    try:
        await gitrepo.seed(channel, repository, template, tmp_path)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != Code.UNIMPLEMENTED:
            raise
        # CreateRepositoryFromBundle is not served yet: place the copy directly.
        gitrepo.git("clone", "-q", "--mirror", str(template), str(target.disk_path(repository)))
    return repository


@pytest.fixture
async def empty_repo(channel: grpc.aio.Channel, target: Target) -> shared_pb2.Repository:
    repository = target.repository()
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    try:
        await stub.CreateRepository(repository_pb2.CreateRepositoryRequest(repository=repository))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != Code.UNIMPLEMENTED:
            raise
        gitrepo.git("init", "-q", "--bare", "-b", "main", str(target.disk_path(repository)))
    return repository


def refs(target: Target, repository: shared_pb2.Repository) -> dict[str, str]:
    return gitrepo.refs(target.disk_path(repository))


def git_at(target: Target, repository: shared_pb2.Repository, *args: str) -> str:
    return gitrepo.git(*args, cwd=target.disk_path(repository))


def tree_of(target: Target, repository: shared_pb2.Repository, commit: str) -> dict[str, tuple]:
    """path -> (mode, content) of every file in a commit, read with git on disk."""
    out = git_at(target, repository, "ls-tree", "-r", "-z", "--full-tree", commit)
    files: dict[str, tuple] = {}
    for record in filter(None, out.split("\0")):
        meta, path = record.split("\t", 1)
        mode, _kind, oid = meta.split()
        files[path] = (mode, git_at(target, repository, "cat-file", "blob", oid))
    return files


async def expect_error(call: Awaitable[object], code: grpc.StatusCode, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    details = info.value.details() or ""
    assert text in details
    return details


def check_commit(
    target: Target, repository: shared_pb2.Repository, commit: shared_pb2.GitCommit
) -> None:
    """Compare a GitCommit with what git itself says about that commit."""
    fmt = "%H%n%T%n%P%n%an%n%ae%n%at%n%cn%n%ce%n%ct%n%s"
    fields = git_at(target, repository, "log", "-1", f"--format={fmt}", commit.id).split("\n")
    oid, tree, parents, an, ae, at, cn, ce, ct, subject = fields[:10]
    assert commit.id == oid
    assert commit.tree_id == tree
    assert list(commit.parent_ids) == parents.split()
    assert (commit.author.name, commit.author.email) == (an.encode(), ae.encode())
    assert commit.author.date.seconds == int(at)
    assert (commit.committer.name, commit.committer.email) == (cn.encode(), ce.encode())
    assert commit.committer.date.seconds == int(ct)
    assert commit.subject == subject.encode()
    raw = gitrepo.git("cat-file", "commit", oid, cwd=target.disk_path(repository))
    assert commit.body == raw.split("\n\n", 1)[1].encode()


# --- repository addressing: every RPC, every way to name a bad repository ----------------------


def _create_branch(repo: shared_pb2.Repository) -> operations_pb2.UserCreateBranchRequest:
    return operations_pb2.UserCreateBranchRequest(
        repository=repo, branch_name=b"x", user=USER, start_point=b"main"
    )


def _commit_header(
    repo: shared_pb2.Repository, branch: bytes = b"main", **fields: object
) -> operations_pb2.UserCommitFilesRequest:
    header = operations_pb2.UserCommitFilesRequestHeader(
        repository=repo, user=USER, branch_name=branch, commit_message=b"change files\n"
    )
    for key, value in fields.items():
        if key == "timestamp":
            header.timestamp.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(header, key, value)
    return operations_pb2.UserCommitFilesRequest(header=header)


def action(kind: int, path: bytes, content: bytes | None = None, **fields: object) -> list:
    """An action header (and its content as one chunk)."""
    messages = [
        operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(
                header=operations_pb2.UserCommitFilesActionHeader(
                    action=kind,
                    file_path=path,
                    **fields,  # type: ignore[arg-type]
                )
            )
        )
    ]
    if content is not None:
        messages.append(
            operations_pb2.UserCommitFilesRequest(
                action=operations_pb2.UserCommitFilesAction(content=content)
            )
        )
    return messages


async def stream(messages: list) -> AsyncIterator[operations_pb2.UserCommitFilesRequest]:
    for message in messages:
        yield message


Caller = Callable[
    [operations_pb2_grpc.OperationServiceStub, shared_pb2.Repository], Awaitable[object]
]
CALLS: dict[str, Caller] = {
    "UserCreateBranch": lambda s, r: s.UserCreateBranch(_create_branch(r)),
    "UserDeleteBranch": lambda s, r: s.UserDeleteBranch(
        operations_pb2.UserDeleteBranchRequest(repository=r, branch_name=b"x", user=USER)
    ),
    "UserCreateTag": lambda s, r: s.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=r, tag_name=b"t", user=USER, target_revision=b"main"
        )
    ),
    "UserDeleteTag": lambda s, r: s.UserDeleteTag(
        operations_pb2.UserDeleteTagRequest(repository=r, tag_name=b"t", user=USER)
    ),
    "UserCommitFiles": lambda s, r: s.UserCommitFiles(
        stream([_commit_header(r), *action(Action.CREATE, b"f", b"x")])
    ),
}


@pytest.fixture
def escaping_link(target: Target, tmp_path: Path) -> Iterator[str]:
    """A symlink inside the storage root that points at a real repository outside it."""
    if target.storage_path is None:
        pytest.skip("needs the storage's disk")
    outside = tmp_path / "outside.git"
    gitrepo.git("init", "-q", "--bare", str(outside))
    link = target.storage_path / f"escape-{tmp_path.name}"
    link.symlink_to(outside)
    yield link.name
    link.unlink()


BAD_REPOSITORIES = {
    "unknown storage": (
        lambda t: shared_pb2.Repository(storage_name="nope", relative_path="a.git"),
        Code.INVALID_ARGUMENT,
    ),
    "absolute path": (lambda t: t.repository("/etc/passwd.git"), Code.INVALID_ARGUMENT),
    "dot-dot": (lambda t: t.repository("../outside.git"), Code.INVALID_ARGUMENT),
    "nul byte": (lambda t: t.repository("a\x00b.git"), Code.INVALID_ARGUMENT),
    "missing repository": (lambda t: t.repository("does/not/exist.git"), Code.NOT_FOUND),
    "repository not set": (lambda t: shared_pb2.Repository(), Code.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(BAD_REPOSITORIES))
async def test_bad_repository(
    rpc: str, case: str, target: Target, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    make, code = BAD_REPOSITORIES[case]
    await expect_error(CALLS[rpc](stub, make(target)), code)


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_symlink_escaping_storage_root(
    rpc: str, target: Target, stub: operations_pb2_grpc.OperationServiceStub, escaping_link: str
) -> None:
    await expect_error(CALLS[rpc](stub, target.repository(escaping_link)), Code.INVALID_ARGUMENT)


@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_undecodable_request(rpc: str, channel: grpc.aio.Channel) -> None:
    garbage = b"\x0a\xff\xff\xff"  # field 1, length far beyond the message
    method = f"/gitaly.OperationService/{rpc}"
    if rpc == "UserCommitFiles":
        call = channel.stream_unary(method)(stream([garbage]))
    else:
        call = channel.unary_unary(method)(garbage)
    await expect_error(call, Code.INVALID_ARGUMENT)


# --- UserCreateBranch ---------------------------------------------------------------------------


async def test_create_branch(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    response = await stub.UserCreateBranch(
        operations_pb2.UserCreateBranchRequest(
            repository=repo, branch_name=b"topic/new", user=USER, start_point=b"feature"
        )
    )
    after = refs(target, repo)
    assert after == {**before, "refs/heads/topic/new": before["refs/heads/feature"]}
    assert response.branch.name == b"topic/new"
    check_commit(target, repo, response.branch.target_commit)
    assert response.branch.target_commit.id == before["refs/heads/feature"]


@pytest.mark.parametrize("start", ["oid", "v1.1", "refs/tags/v1.0", "main~2"])
async def test_create_branch_start_point_forms(
    start: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    spec = refs(target, repo)["refs/heads/main"] if start == "oid" else start
    expected = git_at(target, repo, "rev-parse", f"{spec}^{{commit}}").strip()
    response = await stub.UserCreateBranch(
        operations_pb2.UserCreateBranchRequest(
            repository=repo, branch_name=b"b", user=USER, start_point=spec.encode()
        )
    )
    assert response.branch.target_commit.id == expected
    assert refs(target, repo)["refs/heads/b"] == expected


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"branch_name": b""}, Code.INVALID_ARGUMENT, "empty branch name"),
        ({"user": None}, Code.INVALID_ARGUMENT, "empty user"),
        ({"start_point": b""}, Code.INVALID_ARGUMENT, "empty start point"),
        ({"branch_name": b"bad..name"}, Code.INVALID_ARGUMENT, "invalid branch name"),
        ({"branch_name": b"\xff\xfe"}, Code.INVALID_ARGUMENT, "invalid branch name"),
        ({"start_point": b"nope"}, Code.FAILED_PRECONDITION, "revspec 'nope' not found"),
        ({"start_point": b"main:README.md"}, Code.FAILED_PRECONDITION, "not found"),
        ({"start_point": b"HEAD:./x"}, Code.FAILED_PRECONDITION, "not found"),
        (
            {"branch_name": b"feature"},
            Code.FAILED_PRECONDITION,
            "Could not update refs/heads/feature",
        ),
    ],
)
async def test_create_branch_errors(
    fields: dict,
    code: grpc.StatusCode,
    text: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    request = _create_branch(repo)
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    before = refs(target, repo)
    await expect_error(stub.UserCreateBranch(request), code, text)
    assert refs(target, repo) == before


# --- UserDeleteBranch ---------------------------------------------------------------------------


async def test_delete_branch(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    await stub.UserDeleteBranch(
        operations_pb2.UserDeleteBranchRequest(repository=repo, branch_name=b"feature", user=USER)
    )
    expected = dict(before)
    del expected["refs/heads/feature"]
    assert refs(target, repo) == expected


async def test_delete_branch_with_expected_old_oid(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    stale = before["refs/heads/main"]
    await expect_error(
        stub.UserDeleteBranch(
            operations_pb2.UserDeleteBranchRequest(
                repository=repo, branch_name=b"feature", user=USER, expected_old_oid=stale
            )
        ),
        Code.FAILED_PRECONDITION,
        "reference update failed",
    )
    assert refs(target, repo) == before
    await stub.UserDeleteBranch(
        operations_pb2.UserDeleteBranchRequest(
            repository=repo,
            branch_name=b"feature",
            user=USER,
            expected_old_oid=before["refs/heads/feature"],
        )
    )
    assert "refs/heads/feature" not in refs(target, repo)


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"branch_name": b""}, Code.INVALID_ARGUMENT, "empty branch name"),
        ({"user": None}, Code.INVALID_ARGUMENT, "empty user"),
        ({"branch_name": b"missing"}, Code.FAILED_PRECONDITION, 'branch not found: "missing"'),
        ({"expected_old_oid": "xyz"}, Code.INVALID_ARGUMENT, "invalid expected old object ID"),
        ({"expected_old_oid": "1" * 40}, Code.INVALID_ARGUMENT, "cannot resolve expected old"),
    ],
)
async def test_delete_branch_errors(
    fields: dict,
    code: grpc.StatusCode,
    text: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    request = operations_pb2.UserDeleteBranchRequest(
        repository=repo, branch_name=b"feature", user=USER
    )
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    before = refs(target, repo)
    await expect_error(stub.UserDeleteBranch(request), code, text)
    assert refs(target, repo) == before


# --- UserCreateTag / UserDeleteTag ---------------------------------------------------------------


async def test_create_lightweight_tag(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    response = await stub.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=repo, tag_name=b"v2.0", user=USER, target_revision=b"feature"
        )
    )
    commit = before["refs/heads/feature"]
    assert refs(target, repo) == {**before, "refs/tags/v2.0": commit}
    assert response.tag.name == b"v2.0"
    assert response.tag.id == commit
    assert response.tag.message == b""
    check_commit(target, repo, response.tag.target_commit)


async def test_create_annotated_tag(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    when = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    message = b"Release 2.1\n\nWith notes."
    response = await stub.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=repo,
            tag_name=b"v2.1",
            user=USER,
            target_revision=b"main",
            message=message,
            timestamp=when,
        )
    )
    tag_oid = refs(target, repo)["refs/tags/v2.1"]
    assert response.tag.id == tag_oid
    raw = git_at(target, repo, "cat-file", "tag", tag_oid)
    assert (
        raw
        == (
            f"object {before['refs/heads/main']}\ntype commit\ntag v2.1\n"
            f"tagger Jane Doe <jane@example.com> 1700000000 +0000\n\n"
        )
        + message.decode()
    )
    assert response.tag.message == message
    assert response.tag.message_size == len(message)
    assert response.tag.tagger.name == b"Jane Doe"
    assert response.tag.tagger.email == b"jane@example.com"
    assert response.tag.tagger.date.seconds == 1_700_000_000
    assert response.tag.target_commit.id == before["refs/heads/main"]
    git_at(target, repo, "fsck", "--no-dangling", "--strict")


async def test_create_annotated_tag_of_tag_and_user_timezone(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    user = shared_pb2.User(name=b"Jane", email=b"j@example.com", timezone="Asia/Kolkata")
    response = await stub.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=repo,
            tag_name=b"v1.1-signed-off",
            user=user,
            target_revision=b"v1.1",
            message=b"tag of a tag",
            timestamp=timestamp_pb2.Timestamp(seconds=1_000_000_000),
        )
    )
    raw = git_at(target, repo, "cat-file", "tag", response.tag.id)
    assert f"object {before['refs/tags/v1.1']}\ntype tag\n" in raw
    assert "tagger Jane <j@example.com> 1000000000 +0530\n" in raw
    assert response.tag.tagger.timezone == b"+0530"
    # target_commit is the commit at the end of the chain.
    assert response.tag.target_commit.id == git_at(target, repo, "rev-parse", "v1.1^{}").strip()


async def test_lightweight_tag_of_annotated_tag_points_at_commit(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    peeled = git_at(target, repo, "rev-parse", "v1.1^{}").strip()
    response = await stub.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=repo, tag_name=b"light", user=USER, target_revision=b"v1.1"
        )
    )
    assert response.tag.id == peeled
    assert refs(target, repo)["refs/tags/light"] == peeled


async def test_lightweight_tag_of_tree_has_no_commit(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    tree = git_at(target, repo, "rev-parse", "main^{tree}").strip()
    response = await stub.UserCreateTag(
        operations_pb2.UserCreateTagRequest(
            repository=repo, tag_name=b"tree-tag", user=USER, target_revision=tree.encode()
        )
    )
    assert response.tag.id == tree
    assert not response.tag.HasField("target_commit")
    assert refs(target, repo)["refs/tags/tree-tag"] == tree


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"tag_name": b""}, Code.INVALID_ARGUMENT, "empty tag name"),
        ({"tag_name": b"bad tag"}, Code.INVALID_ARGUMENT, "invalid tag name"),
        ({"tag_name": b"-dash"}, Code.INVALID_ARGUMENT, "invalid tag name"),
        ({"tag_name": b"a..b"}, Code.INVALID_ARGUMENT, "invalid tag name"),
        ({"user": None}, Code.INVALID_ARGUMENT, "empty user"),
        ({"target_revision": b""}, Code.INVALID_ARGUMENT, "empty target revision"),
        ({"message": b"a\x00b"}, Code.INVALID_ARGUMENT, "NUL byte"),
        ({"target_revision": b"nope"}, Code.FAILED_PRECONDITION, "revspec 'nope' not found"),
        ({"tag_name": b"v1.0"}, Code.ALREADY_EXISTS, "tag reference exists already"),
        ({"tag_name": b"v1.0", "message": b"annotated"}, Code.ALREADY_EXISTS, "exists already"),
    ],
)
async def test_create_tag_errors(
    fields: dict,
    code: grpc.StatusCode,
    text: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    request = operations_pb2.UserCreateTagRequest(
        repository=repo, tag_name=b"new", user=USER, target_revision=b"main"
    )
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    before = refs(target, repo)
    await expect_error(stub.UserCreateTag(request), code, text)
    assert refs(target, repo) == before


async def test_delete_tag(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    await stub.UserDeleteTag(
        operations_pb2.UserDeleteTagRequest(repository=repo, tag_name=b"v1.1", user=USER)
    )
    await stub.UserDeleteTag(
        operations_pb2.UserDeleteTagRequest(
            repository=repo, tag_name=b"v1.0", user=USER, expected_old_oid=before["refs/tags/v1.0"]
        )
    )
    expected = {k: v for k, v in before.items() if not k.startswith("refs/tags/")}
    assert refs(target, repo) == expected


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"tag_name": b""}, Code.INVALID_ARGUMENT, "empty tag name"),
        ({"user": None}, Code.INVALID_ARGUMENT, "empty user"),
        ({"tag_name": b"v9"}, Code.FAILED_PRECONDITION, "tag not found: v9"),
        ({"expected_old_oid": "z" * 40}, Code.INVALID_ARGUMENT, "invalid expected old object ID"),
        ({"expected_old_oid": "main"}, Code.INVALID_ARGUMENT, "invalid expected old object ID"),
    ],
)
async def test_delete_tag_errors(
    fields: dict,
    code: grpc.StatusCode,
    text: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    request = operations_pb2.UserDeleteTagRequest(repository=repo, tag_name=b"v1.0", user=USER)
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    before = refs(target, repo)
    await expect_error(stub.UserDeleteTag(request), code, text)
    assert refs(target, repo) == before


async def test_delete_tag_stale_expected_old_oid(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    await expect_error(
        stub.UserDeleteTag(
            operations_pb2.UserDeleteTagRequest(
                repository=repo,
                tag_name=b"v1.0",
                user=USER,
                expected_old_oid=before["refs/heads/feature"],
            )
        ),
        Code.FAILED_PRECONDITION,
        "Could not update refs/tags/v1.0",
    )
    assert refs(target, repo) == before


# --- UserCommitFiles ----------------------------------------------------------------------------


def _no_leftovers(target: Target) -> None:
    if target.storage_path is None:
        return
    tmp = target.storage_path / "+gitquorum" / "tmp"
    if tmp.exists():
        assert not [p for p in tmp.iterdir() if p.name.startswith("commit-files-")]


async def test_commit_files_create_on_existing_branch(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    when = timestamp_pb2.Timestamp(seconds=1_600_000_000)
    response = await stub.UserCommitFiles(
        stream(
            [
                _commit_header(
                    repo,
                    timestamp=when,
                    commit_author_name=b"Ada Author",
                    commit_author_email=b"ada@example.com",
                ),
                *action(Action.CREATE, b"docs/new.md", b"# new\n"),
            ]
        )
    )
    update = response.branch_update
    assert (update.repo_created, update.branch_created) == (False, False)
    assert refs(target, repo) == {**before, "refs/heads/main": update.commit_id}
    raw = git_at(target, repo, "cat-file", "commit", update.commit_id)
    assert f"\nparent {before['refs/heads/main']}\n" in raw
    assert "\nauthor Ada Author <ada@example.com> 1600000000 +0000\n" in raw
    assert "\ncommitter Jane Doe <jane@example.com> 1600000000 +0000\n" in raw
    assert raw.endswith("\n\nchange files\n")
    files = tree_of(target, repo, update.commit_id)
    old_files = tree_of(target, repo, before["refs/heads/main"])
    assert files == {**old_files, "docs/new.md": ("100644", "# new\n")}
    _no_leftovers(target)


async def test_commit_files_every_action(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    head = refs(target, repo)["refs/heads/main"]
    old = tree_of(target, repo, head)
    assert {"README.md", "src/file0.txt", "src/file1.txt", "src/file2.txt"} <= set(old)
    encoded = base64.b64encode(b"binary \x00\xff payload" * 100)
    messages = [
        _commit_header(repo),
        # base64 content split at arbitrary points, across several messages
        *action(Action.CREATE, b"bin/data.bin", encoded[:5], base64_content=True),
        operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(content=encoded[5:77])
        ),
        operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(content=encoded[77:])
        ),
        *action(Action.CREATE, b"tools/run.sh", b"#!/bin/sh\n", execute_filemode=True),
        *action(Action.CREATE_DIR, b"empty/dir"),
        *action(Action.UPDATE, b"README.md", b"updated\n"),
        *action(
            Action.MOVE, b"moved/file0.txt", previous_path=b"src/file0.txt", infer_content=True
        ),
        *action(Action.MOVE, b"file1.renamed", b"new content\n", previous_path=b"src/file1.txt"),
        *action(Action.DELETE, b"src/file2.txt"),
        *action(Action.CHMOD, b"README.md", execute_filemode=True),
    ]
    response = await stub.UserCommitFiles(stream(messages))
    files = tree_of(target, repo, response.branch_update.commit_id)
    expected = dict(old)
    for gone in ("src/file0.txt", "src/file1.txt", "src/file2.txt"):
        del expected[gone]
    expected.update(
        {
            "bin/data.bin": ("100644", (b"binary \x00\xff payload" * 100).decode(errors="replace")),
            "tools/run.sh": ("100755", "#!/bin/sh\n"),
            "empty/dir/.gitkeep": ("100644", ""),
            "README.md": ("100755", "updated\n"),
            "moved/file0.txt": ("100644", old["src/file0.txt"][1]),
            "file1.renamed": ("100644", "new content\n"),
        }
    )
    assert files == expected
    raw = _raw_blob(target, repo, f"{response.branch_update.commit_id}:bin/data.bin")
    assert raw == b"binary \x00\xff payload" * 100
    git_at(target, repo, "fsck", "--no-dangling", "--strict")
    _no_leftovers(target)


def _raw_blob(target: Target, repository: shared_pb2.Repository, spec: str) -> bytes:
    return subprocess.run(
        ["git", "cat-file", "blob", spec],
        cwd=target.disk_path(repository),
        capture_output=True,
        check=True,
    ).stdout


async def test_commit_files_delete_directory_and_chmod_back(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    first = await stub.UserCommitFiles(
        stream([_commit_header(repo), *action(Action.CREATE, b"x.sh", b"x", execute_filemode=True)])
    )
    assert tree_of(target, repo, first.branch_update.commit_id)["x.sh"][0] == "100755"
    second = await stub.UserCommitFiles(
        stream(
            [
                _commit_header(repo),
                *action(Action.DELETE, b"src"),
                *action(Action.CHMOD, b"x.sh", execute_filemode=False),
            ]
        )
    )
    files = tree_of(target, repo, second.branch_update.commit_id)
    assert not [p for p in files if p.startswith("src/")]
    assert files["x.sh"] == ("100644", "x")


async def test_commit_files_large_file_in_chunks(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    chunk = 1 << 20
    messages = [_commit_header(repo), *action(Action.CREATE, b"big.bin")]
    messages += [
        operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(content=payload[i : i + chunk])
        )
        for i in range(0, len(payload), chunk)
    ]
    response = await stub.UserCommitFiles(stream(messages))
    stored = _raw_blob(target, repo, f"{response.branch_update.commit_id}:big.bin")
    assert stored == payload


async def test_commit_files_new_branch_from_start_branch(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    response = await stub.UserCommitFiles(
        stream(
            [
                _commit_header(repo, branch=b"topic", start_branch_name=b"feature"),
                *action(Action.CREATE, b"topic.txt", b"t\n"),
            ]
        )
    )
    update = response.branch_update
    assert (update.repo_created, update.branch_created) == (False, True)
    assert refs(target, repo) == {**before, "refs/heads/topic": update.commit_id}
    parents = git_at(target, repo, "rev-parse", f"{update.commit_id}^@").split()
    assert parents == [before["refs/heads/feature"]]


async def test_commit_files_new_branch_from_start_sha(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    start = git_at(target, repo, "rev-parse", "main~2").strip()
    response = await stub.UserCommitFiles(
        stream(
            [
                _commit_header(repo, branch=b"from-sha", start_sha=start),
                *action(Action.CREATE, b"s.txt", b"s"),
            ]
        )
    )
    assert response.branch_update.branch_created
    assert git_at(target, repo, "rev-parse", "from-sha^").strip() == start


async def test_commit_files_into_empty_repository(
    target: Target,
    empty_repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    response = await stub.UserCommitFiles(
        stream(
            [
                _commit_header(empty_repo, start_branch_name=b"main"),
                *action(Action.CREATE, b"README", b"first\n"),
            ]
        )
    )
    update = response.branch_update
    assert (update.repo_created, update.branch_created) == (True, True)
    assert refs(target, empty_repo) == {"refs/heads/main": update.commit_id}
    assert "parent" not in git_at(target, empty_repo, "cat-file", "commit", update.commit_id)
    assert tree_of(target, empty_repo, update.commit_id) == {"README": ("100644", "first\n")}


async def test_commit_files_force_and_diverged_branch(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    diverged = [
        _commit_header(repo, start_branch_name=b"feature"),
        *action(Action.CREATE, b"d.txt", b"d"),
    ]
    # main is not at feature: without force the branch cannot move.
    await expect_error(
        stub.UserCommitFiles(stream(diverged)),
        Code.FAILED_PRECONDITION,
        "Could not update refs/heads/main",
    )
    assert refs(target, repo) == before
    forced = [
        _commit_header(repo, start_branch_name=b"feature", force=True),
        *action(Action.CREATE, b"d.txt", b"d"),
    ]
    response = await stub.UserCommitFiles(stream(forced))
    assert refs(target, repo)["refs/heads/main"] == response.branch_update.commit_id
    assert git_at(target, repo, "rev-parse", "main^").strip() == before["refs/heads/feature"]


async def test_commit_files_expected_old_oid(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    stale = [
        _commit_header(repo, expected_old_oid=before["refs/heads/feature"]),
        *action(Action.CREATE, b"e.txt", b"e"),
    ]
    await expect_error(stub.UserCommitFiles(stream(stale)), Code.FAILED_PRECONDITION)
    assert refs(target, repo) == before
    current = [
        _commit_header(repo, expected_old_oid=before["refs/heads/main"]),
        *action(Action.CREATE, b"e.txt", b"e"),
    ]
    response = await stub.UserCommitFiles(stream(current))
    assert refs(target, repo)["refs/heads/main"] == response.branch_update.commit_id


HEADER_ERRORS = {
    "no user": ({"user": None}, Code.INVALID_ARGUMENT, "empty User"),
    "no message": ({"commit_message": b""}, Code.INVALID_ARGUMENT, "empty CommitMessage"),
    "no branch": ({"branch_name": b""}, Code.INVALID_ARGUMENT, "empty BranchName"),
    "bad branch": ({"branch_name": b"a b"}, Code.INVALID_ARGUMENT, "invalid branch name"),
    "non-utf8 branch": ({"branch_name": b"\xff"}, Code.INVALID_ARGUMENT, "invalid branch name"),
    "bad start sha": ({"start_sha": "1234"}, Code.INVALID_ARGUMENT, ""),
    "unknown start sha": ({"start_sha": "1" * 40}, Code.FAILED_PRECONDITION, "not found"),
    "unknown start branch": (
        {"start_branch_name": b"nope"},
        Code.FAILED_PRECONDITION,
        "not found",
    ),
    "bad expected old": ({"expected_old_oid": "x"}, Code.INVALID_ARGUMENT, "expected old"),
    "unknown expected old": (
        {"expected_old_oid": "2" * 40},
        Code.INVALID_ARGUMENT,
        "cannot resolve expected old object ID",
    ),
    "bad timestamp": (
        {"timestamp": timestamp_pb2.Timestamp(seconds=10**12)},
        Code.INVALID_ARGUMENT,
        "timestamp",
    ),
    "angle bracket in author": (
        {"commit_author_name": b"a <b>"},
        Code.INVALID_ARGUMENT,
        "disallowed characters",
    ),
    "blank user name": (
        {"user": shared_pb2.User(name=b"  ", email=b"e@x")},
        Code.INVALID_ARGUMENT,
        "Signature cannot have an empty name or email",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADER_ERRORS))
async def test_commit_files_header_errors(
    case: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    fields, code, text = HEADER_ERRORS[case]
    first = _commit_header(repo)
    for key, value in fields.items():
        if value is None:
            first.header.ClearField(key)  # type: ignore[arg-type]
        elif key in ("timestamp", "user"):
            getattr(first.header, key).CopyFrom(value)
        else:
            setattr(first.header, key, value)
    before = refs(target, repo)
    await expect_error(
        stub.UserCommitFiles(stream([first, *action(Action.CREATE, b"n.txt", b"n")])), code, text
    )
    assert refs(target, repo) == before
    _no_leftovers(target)


ACTION_ERRORS = {
    "create existing file": (
        action(Action.CREATE, b"README.md", b"x"),
        Code.ALREADY_EXISTS,
        "A file with this name already exists",
    ),
    "create under a file": (
        action(Action.CREATE, b"README.md/inner", b"x"),
        Code.ALREADY_EXISTS,
        "A file with this name already exists",
    ),
    "create existing directory": (
        action(Action.CREATE_DIR, b"src"),
        Code.ALREADY_EXISTS,
        "A directory with this name already exists",
    ),
    "create directory over file": (
        action(Action.CREATE_DIR, b"README.md"),
        Code.ALREADY_EXISTS,
        "A file with this name already exists",
    ),
    "update missing": (
        action(Action.UPDATE, b"nope.txt", b"x"),
        Code.NOT_FOUND,
        "A file with this name doesn't exist",
    ),
    "update a directory": (
        action(Action.UPDATE, b"src", b"x"),
        Code.NOT_FOUND,
        "A file with this name doesn't exist",
    ),
    "move missing": (
        action(Action.MOVE, b"to.txt", previous_path=b"from.txt", infer_content=True),
        Code.NOT_FOUND,
        "doesn't exist",
    ),
    "move onto a file": (
        action(Action.MOVE, b"README.md", previous_path=b"src/file0.txt", infer_content=True),
        Code.ALREADY_EXISTS,
        "already exists",
    ),
    "delete missing": (action(Action.DELETE, b"nope"), Code.NOT_FOUND, "doesn't exist"),
    "chmod missing": (action(Action.CHMOD, b"nope", execute_filemode=True), Code.NOT_FOUND, ""),
    "traversal": (
        action(Action.CREATE, b"../outside", b"x"),
        Code.INVALID_ARGUMENT,
        "Path cannot include directory traversal",
    ),
    "inner traversal": (
        action(Action.CREATE, b"a/../../b", b"x"),
        Code.INVALID_ARGUMENT,
        "directory traversal",
    ),
    "absolute path": (
        action(Action.CREATE, b"/etc/x", b"x"),
        Code.INVALID_ARGUMENT,
        "invalid path",
    ),
    "double slash": (action(Action.CREATE, b"a//b", b"x"), Code.INVALID_ARGUMENT, "invalid path"),
    "git directory": (
        action(Action.CREATE, b".git/config", b"x"),
        Code.INVALID_ARGUMENT,
        "invalid path",
    ),
    "nested git directory": (
        action(Action.CREATE, b"sub/.GIT/hooks/x", b"x"),
        Code.INVALID_ARGUMENT,
        "invalid path",
    ),
    "nul in path": (action(Action.CREATE, b"a\x00b", b"x"), Code.INVALID_ARGUMENT, "invalid path"),
    "empty path": (
        action(Action.CREATE, b"", b"x"),
        Code.INVALID_ARGUMENT,
        "You must provide a file path",
    ),
    "move from traversal": (
        action(Action.MOVE, b"ok.txt", previous_path=b"../x", infer_content=True),
        Code.INVALID_ARGUMENT,
        "directory traversal",
    ),
    "bad base64": (
        action(Action.CREATE, b"b.bin", b"!!!!", base64_content=True),
        Code.INVALID_ARGUMENT,
        "base64",
    ),
    "truncated base64": (
        action(Action.CREATE, b"b.bin", b"YWJj2", base64_content=True),
        Code.INVALID_ARGUMENT,
        "base64",
    ),
    "unknown action": (action(42, b"x.txt", b"x"), Code.INVALID_ARGUMENT, "undefined method"),
    "content before action": (
        [
            operations_pb2.UserCommitFilesRequest(
                action=operations_pb2.UserCommitFilesAction(content=b"orphan")
            )
        ],
        Code.INVALID_ARGUMENT,
        "content sent before action",
    ),
    "empty request": (
        [operations_pb2.UserCommitFilesRequest()],
        Code.INVALID_ARGUMENT,
        "neither header nor action",
    ),
    "empty action": (
        [operations_pb2.UserCommitFilesRequest(action=operations_pb2.UserCommitFilesAction())],
        Code.INVALID_ARGUMENT,
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(ACTION_ERRORS))
async def test_commit_files_action_errors(
    case: str,
    target: Target,
    repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    messages, code, text = ACTION_ERRORS[case]
    before = refs(target, repo)
    await expect_error(stub.UserCommitFiles(stream([_commit_header(repo), *messages])), code, text)
    assert refs(target, repo) == before
    _no_leftovers(target)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        action(Action.CREATE, b"x", b"x"),
        [operations_pb2.UserCommitFilesRequest()],
    ],
    ids=["empty stream", "action first", "empty message first"],
)
async def test_commit_files_missing_header(
    messages: list, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    await expect_error(
        stub.UserCommitFiles(stream(messages)),
        Code.INVALID_ARGUMENT,
        # The proxy rejects a stream without a header (hence without a target
        # repository) itself, in its own words.
        "" if THROUGH_PROXY else "empty UserCommitFilesRequestHeader",
    )


async def test_commit_files_second_header_rejected(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    before = refs(target, repo)
    await expect_error(
        stub.UserCommitFiles(stream([_commit_header(repo), _commit_header(repo)])),
        Code.INVALID_ARGUMENT,
    )
    assert refs(target, repo) == before


async def test_commit_files_same_start_repository(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    header = _commit_header(repo, branch=b"via-start", start_branch_name=b"main")
    header.header.start_repository.CopyFrom(repo)
    response = await stub.UserCommitFiles(stream([header, *action(Action.CREATE, b"s", b"s")]))
    assert (
        git_at(target, repo, "rev-parse", "via-start^").strip()
        == refs(target, repo)["refs/heads/main"]
    )
    assert response.branch_update.branch_created


async def test_commit_files_start_repository_elsewhere_is_unimplemented(
    target: Target,
    repo: shared_pb2.Repository,
    empty_repo: shared_pb2.Repository,
    stub: operations_pb2_grpc.OperationServiceStub,
) -> None:
    before = refs(target, repo)
    header = _commit_header(repo, start_branch_name=b"main")
    header.header.start_repository.CopyFrom(empty_repo)
    await expect_error(
        stub.UserCommitFiles(stream([header, *action(Action.CREATE, b"s", b"s")])),
        Code.UNIMPLEMENTED,
    )
    assert refs(target, repo) == before


async def test_commit_files_start_repository_with_unknown_storage_is_the_target(
    target: Target, repo: shared_pb2.Repository, stub: operations_pb2_grpc.OperationServiceStub
) -> None:
    """Behind a proxy the start repository keeps its virtual storage name."""
    header = _commit_header(repo, branch=b"virtual", start_branch_name=b"feature")
    header.header.start_repository.CopyFrom(
        shared_pb2.Repository(storage_name="virtual", relative_path="project.git")
    )
    await stub.UserCommitFiles(stream([header, *action(Action.CREATE, b"v", b"v")]))
    assert (
        git_at(target, repo, "rev-parse", "virtual^").strip()
        == refs(target, repo)["refs/heads/feature"]
    )
