"""BlobService on a real node, checked against the git CLI run on the replica's disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gitaly import blob_pb2, blob_pb2_grpc, commit_pb2, commit_pb2_grpc, shared_pb2
from tests.conftest import Target
from tests.harness import gitrepo
from tests.harness.gitrepo import git
from tests.harness.node import NodeProcess

BINARY_SIZE = 2 * 1024 * 1024 + 77
INVALID = grpc.StatusCode.INVALID_ARGUMENT
Seeded = tuple[shared_pb2.Repository, Path]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = gitrepo.make_repo(
        tmp_path_factory.mktemp("blob-service") / "src", commits=3, binary_size=BINARY_SIZE
    )
    (source / "empty.txt").write_bytes(b"")
    git("add", "empty.txt", cwd=source)
    sub_oid = git("rev-parse", "HEAD~1", cwd=source).strip()
    git("update-index", "--add", "--cacheinfo", f"160000,{sub_oid},vendor/sub", cwd=source)
    git("commit", "-q", "-m", "submodule and empty file", cwd=source)
    return source


# Read-only tests share one repository per target, seeded through the target itself.
_SEEDED: dict[str, Seeded] = {}


def _disk(target: Target, repo: shared_pb2.Repository) -> Path:
    # Differential checks read the replica's disk: through a proxy, the primary's replica.
    return target.disk_path(repo)


@pytest.fixture
async def seeded(channel: grpc.aio.Channel, target: Target, source: Path, workdir: Path) -> Seeded:
    if target.address not in _SEEDED:
        repo = target.repository(f"blob/{uuid.uuid4().hex}.git")
        await gitrepo.seed(channel, repo, source, workdir)
        _SEEDED[target.address] = (repo, _disk(target, repo))
    return _SEEDED[target.address]


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> blob_pb2_grpc.BlobServiceStub:
    return blob_pb2_grpc.BlobServiceStub(channel)


def disk(path: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=path, capture_output=True, check=True).stdout


async def collect(call: Any) -> list[Any]:
    return [message async for message in call]


async def status_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if hasattr(call, "__aiter__"):
            await collect(call)
        else:
            await call
    return err.value.code()


def oid_of(path: Path, revision: str) -> str:
    return disk(path, "rev-parse", revision).decode().strip()


# --- GetBlob -------------------------------------------------------------------------------------


async def test_get_blob_small(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    oid = oid_of(path, "HEAD:README.md")
    responses = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid=oid, limit=-1))
    )
    data = disk(path, "cat-file", "blob", oid)
    assert (responses[0].oid, responses[0].size) == (oid, len(data))
    assert b"".join(r.data for r in responses) == data


async def test_get_blob_binary_is_chunked(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    oid = oid_of(path, "HEAD:blob.bin")
    responses = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid=oid, limit=-1))
    )
    data = disk(path, "cat-file", "blob", oid)
    assert len(data) == BINARY_SIZE
    assert len(responses) > 1
    assert all(0 < len(r.data) <= 1024 * 1024 for r in responses)
    assert (responses[0].oid, responses[0].size) == (oid, BINARY_SIZE)
    assert all(not r.oid and not r.size for r in responses[1:])
    assert b"".join(r.data for r in responses) == data


@pytest.mark.parametrize(
    "limit", [0, 1, 10, 65536, 65537, 1024 * 1024 + 1, BINARY_SIZE, BINARY_SIZE + 5]
)
async def test_get_blob_limit(stub: Any, seeded: Seeded, limit: int) -> None:
    repo, path = seeded
    oid = oid_of(path, "HEAD:blob.bin")
    responses = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid=oid, limit=limit))
    )
    data = disk(path, "cat-file", "blob", oid)
    assert (responses[0].oid, responses[0].size) == (oid, BINARY_SIZE)
    assert b"".join(r.data for r in responses) == data[:limit]
    if limit == 0:
        assert len(responses) == 1 and not responses[0].data


async def test_get_blob_by_revision_and_empty_blob(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    responses = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="main:src/file1.txt", limit=-1))
    )
    assert responses[0].oid == oid_of(path, "main:src/file1.txt")
    assert b"".join(r.data for r in responses) == disk(path, "show", "main:src/file1.txt")
    (empty,) = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="main:empty.txt", limit=-1))
    )
    assert (empty.oid, empty.size, empty.data) == (oid_of(path, "main:empty.txt"), 0, b"")


async def test_get_blob_missing_or_not_blob_is_one_empty_message(stub: Any, seeded: Seeded) -> None:
    repo, path = seeded
    names = [
        "0" * 40,
        "does-not-exist",
        oid_of(path, "HEAD"),
        oid_of(path, "HEAD^{tree}"),
        "HEAD:nope.txt",
        "HEAD:../x",
        "HEAD:./README.md",
        "@{upstream}",
        "a\nb",
    ]
    for name in names:
        responses = await collect(
            stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid=name, limit=-1))
        )
        assert responses == [blob_pb2.GetBlobResponse()], name
    # The shared cat-file process still answers afterwards.
    after = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:README.md", limit=-1))
    )
    assert after[0].size > 0


async def test_get_blob_invalid(stub: Any, seeded: Seeded) -> None:
    repo, _ = seeded
    assert (
        await status_of(stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="", limit=-1)))
        == INVALID
    )


# --- GetBlobs ------------------------------------------------------------------------------------


def _group(responses: list[blob_pb2.GetBlobsResponse]) -> list[blob_pb2.GetBlobsResponse]:
    """Join each item's data messages onto its first message."""
    items: list[blob_pb2.GetBlobsResponse] = []
    for response in responses:
        if response.revision or response.path:
            items.append(response)
        else:
            items[-1].data += response.data
    return items


def _ls(path: Path, revision: str, entry: str) -> tuple[int, str, str]:
    meta = disk(path, "ls-tree", revision, "--", entry).decode().split("\t")[0].split()
    return int(meta[0], 8), meta[1], meta[2]


@pytest.mark.parametrize("limit", [-1, 0, 5, 100_000])
async def test_get_blobs_matches_git(stub: Any, seeded: Seeded, limit: int) -> None:
    repo, path = seeded
    wanted = [
        ("main", b"README.md"),
        ("main", b"blob.bin"),
        ("main", b"src/file2.txt"),
        ("main", b"src"),
        ("main", b"src/"),
        ("main", b"vendor/sub"),
        ("main", b"empty.txt"),
        ("v1.1", b"README.md"),
        ("main", b"nope.txt"),
        ("does-not-exist", b"README.md"),
        ("main", b"../README.md"),
        ("HEAD~1", b"src/file0.txt"),
    ]
    request = blob_pb2.GetBlobsRequest(
        repository=repo,
        revision_paths=[
            blob_pb2.GetBlobsRequest.RevisionPath(revision=r, path=p) for r, p in wanted
        ],
        limit=limit,
    )
    responses = await collect(stub.GetBlobs(request))
    assert all(len(r.data) <= 1024 * 1024 for r in responses)
    items = _group(responses)
    assert len(items) == len(wanted)
    for (revision, request_path), item in zip(wanted, items, strict=True):
        entry = request_path.rstrip(b"/").decode()
        assert (item.revision, item.path) == (revision, request_path.rstrip(b"/"))
        known = revision != "does-not-exist" and ".." not in entry
        listed = disk(path, "ls-tree", revision, "--", entry) if known else b""
        if not listed:
            assert item == blob_pb2.GetBlobsResponse(revision=revision, path=request_path), entry
            continue
        mode, kind, oid = _ls(path, revision, entry)
        assert (item.oid, item.mode) == (oid, mode)
        if kind == "commit":
            assert item.is_submodule and item.type == shared_pb2.COMMIT and item.size == 0
            continue
        size = int(disk(path, "cat-file", "-s", oid))
        assert item.size == size and not item.is_submodule
        if kind == "tree":
            assert item.type == shared_pb2.TREE and not item.data
            continue
        assert item.type == shared_pb2.BLOB
        data = disk(path, "cat-file", "blob", oid)
        assert item.data == (data if limit < 0 else data[:limit])


@pytest.mark.parametrize(
    "revision_paths",
    [[], [("-main", b"README.md")], [("", b"README.md")], [("main", b"README.md"), ("a b", b"x")]],
)
async def test_get_blobs_invalid(
    stub: Any, seeded: Seeded, revision_paths: list[tuple[str, bytes]]
) -> None:
    repo, _ = seeded
    request = blob_pb2.GetBlobsRequest(
        repository=repo,
        revision_paths=[
            blob_pb2.GetBlobsRequest.RevisionPath(revision=r, path=p) for r, p in revision_paths
        ],
    )
    assert await status_of(stub.GetBlobs(request)) == INVALID


async def test_large_blob_streams_and_survives_cancellation(
    stub: Any, channel: grpc.aio.Channel, target: Target, workdir: Path
) -> None:
    """Blobs beyond the node's buffering size are streamed from cat-file; a client
    that walks away mid-stream must not leave the shared process out of step."""
    source = gitrepo.make_repo(workdir / "big", commits=1, binary_size=9 * 1024 * 1024 + 3)
    repo = target.repository()
    await gitrepo.seed(channel, repo, source, workdir)
    path = target.disk_path(repo)
    data = disk(path, "cat-file", "blob", "HEAD:blob.bin")
    responses = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:blob.bin", limit=-1))
    )
    assert all(len(r.data) <= 1024 * 1024 for r in responses)
    assert b"".join(r.data for r in responses) == data and responses[0].size == len(data)
    for _ in range(3):
        call = stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:blob.bin", limit=-1))
        first = await call.read()
        assert first.size == len(data)
        call.cancel()
        # The next readers of the same repository get whole, correct answers.
        readme = await collect(
            stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:README.md", limit=-1))
        )
        assert b"".join(r.data for r in readme) == disk(path, "cat-file", "blob", "HEAD:README.md")
    tail = await collect(
        stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:blob.bin", limit=-1))
    )
    assert b"".join(r.data for r in tail) == data


# --- concurrency and process reuse ---------------------------------------------------------------


async def test_concurrent_reads_are_all_correct(
    stub: Any, channel: grpc.aio.Channel, seeded: Seeded
) -> None:
    repo, path = seeded
    commits = commit_pb2_grpc.CommitServiceStub(channel)
    revisions = [
        "HEAD",
        "HEAD~1",
        "HEAD~2",
        "HEAD~3",
        "main",
        "feature",
        "v1.0",
        "v1.1",
        "HEAD~4",
        "HEAD^{commit}",
    ]
    blobs = [
        "HEAD:blob.bin",
        "HEAD:README.md",
        "HEAD~2:README.md",
        "HEAD:src/file0.txt",
        "HEAD:blob.bin",
    ] * 2
    expected_commits = [oid_of(path, f"{r}^{{commit}}") for r in revisions]
    expected_blobs = [disk(path, "cat-file", "blob", b) for b in blobs]

    async def find(revision: str) -> str:
        response = await commits.FindCommit(
            commit_pb2.FindCommitRequest(repository=repo, revision=revision.encode())
        )
        return str(response.commit.id)

    async def read(name: str) -> bytes:
        responses = await collect(
            stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid=name, limit=-1))
        )
        return b"".join(r.data for r in responses)

    results = await asyncio.wait_for(
        asyncio.gather(*(find(r) for r in revisions), *(read(b) for b in blobs)), timeout=60
    )
    assert results[: len(revisions)] == expected_commits
    assert results[len(revisions) :] == expected_blobs


def _git_children(node: NodeProcess) -> dict[int, str]:
    """pid -> command line of the node's git child processes (read from /proc);
    a pooled node's are its workers' children."""
    children: dict[int, str] = {}
    tasks = [t for pid in node.server_pids() for t in Path(f"/proc/{pid}/task").iterdir()]
    for task in tasks:
        try:
            listed = (task / "children").read_text().split()
        except OSError:
            continue
        for child in listed:
            try:
                cmdline = (
                    Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\x00", b" ").decode()
                )
            except OSError:
                continue
            if "git" in cmdline.split(" ")[0]:
                children[int(child)] = cmdline
    return children


def _cat_files(node: NodeProcess, replica: Path) -> dict[int, str]:
    return {
        p: c for p, c in _git_children(node).items() if "cat-file" in c and str(Path(replica)) in c
    }


async def test_cat_file_process_is_reused(
    stub: Any, channel: grpc.aio.Channel, seeded: Seeded, target: Target
) -> None:
    if target.storage_path is None or not target.nodes or target.nodes[0].proc is None:
        pytest.skip("needs the node's process")
    repo, _ = seeded
    commits = commit_pb2_grpc.CommitServiceStub(channel)
    node = target.nodes[0]

    async def round_of_reads() -> None:
        await commits.FindCommit(commit_pb2.FindCommitRequest(repository=repo, revision=b"HEAD"))
        await collect(
            stub.GetBlob(blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:README.md", limit=-1))
        )
        await collect(
            commits.TreeEntry(
                commit_pb2.TreeEntryRequest(repository=repo, revision=b"HEAD", path=b"README.md")
            )
        )

    await round_of_reads()
    before = _cat_files(node, seeded[1])
    assert before, "the reads left no cat-file process for the repository"
    for _ in range(30):
        await round_of_reads()
    after = _cat_files(node, seeded[1])
    assert after == before
    # Nothing else accumulates either: no git process is left behind per call.
    assert len(_git_children(node)) <= len(before) + 8


# --- addressing and malformed requests -----------------------------------------------------------


def _requests(repo: shared_pb2.Repository) -> list[tuple[str, Any]]:
    return [
        ("GetBlob", blob_pb2.GetBlobRequest(repository=repo, oid="HEAD:README.md", limit=-1)),
        (
            "GetBlobs",
            blob_pb2.GetBlobsRequest(
                repository=repo,
                revision_paths=[blob_pb2.GetBlobsRequest.RevisionPath(revision="HEAD", path=b"x")],
            ),
        ),
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
    for method in ("GetBlob", "GetBlobs"):
        call = channel.unary_stream(f"/gitaly.BlobService/{method}")(b"\xff\xff\xff\xff")
        assert await status_of(call) == INVALID, method


async def test_tree_entry_refuses_a_blob_over_max_size_before_reading_it(
    channel: grpc.aio.Channel, target: Target, workdir: Path
) -> None:
    """A blob larger than max_size is refused from its header: its body is never
    read, and the repository's cat-file process keeps serving afterwards."""
    if target.storage_path is None or not target.nodes or target.nodes[0].proc is None:
        pytest.skip("needs the node's process")
    source = gitrepo.make_repo(workdir / "big-src", commits=1)
    size = 9 * 1024 * 1024  # above what is buffered whole
    (source / "big.bin").write_bytes(os.urandom(size))
    git("add", "big.bin", cwd=source)
    git("commit", "-q", "-m", "big", cwd=source)
    repo = target.repository(f"blob/big-{uuid.uuid4().hex}.git")
    await gitrepo.seed(channel, repo, source, workdir)
    path = str(target.disk_path(repo))
    commits = commit_pb2_grpc.CommitServiceStub(channel)
    node = target.nodes[0]

    def batch_processes() -> set[int]:
        return {
            p
            for p, c in _git_children(node).items()
            if "cat-file --batch" in c and "batch-check" not in c and path in c
        }

    def entry(name: bytes, **fields: Any) -> Any:
        request = commit_pb2.TreeEntryRequest(
            repository=repo, revision=b"HEAD", path=name, **fields
        )
        return collect(commits.TreeEntry(request))

    readme = await entry(b"README.md")
    before = batch_processes()
    assert len(before) == 1
    for limit in (0, 1024):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await entry(b"big.bin", limit=limit, max_size=1024 * 1024)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"({size})" in (err.value.details() or "")
    assert await entry(b"README.md") == readme
    assert batch_processes() == before
    # Within max_size the blob is answered as before.
    limited = await entry(b"big.bin", limit=1024, max_size=size)
    assert limited[0].size == size and len(b"".join(r.data for r in limited)) == 1024
