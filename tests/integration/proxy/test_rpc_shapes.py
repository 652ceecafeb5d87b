"""Every RPC shape through the proxy, checked against git on every replica's disk.

unary (FindCommit), server-streaming (ListRefs, GetBlob of a 3 MB blob),
client-streaming (CreateRepositoryFromBundle, UpdateReferences,
UserCommitFiles) and bidirectional (SSHUploadPack by ``git clone``,
SSHReceivePack by ``git push``, both with the git-ssh helper).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import (
    blob_pb2,
    blob_pb2_grpc,
    commit_pb2,
    commit_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository


@pytest.fixture
async def channel(healthy: Cluster) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(healthy.proxies[0].address) as ch:
        yield ch


@pytest.fixture
async def seeded(
    healthy: Cluster, channel: grpc.aio.Channel, source: Path, relative_path: str, tmp_path: Path
) -> shared_pb2.Repository:
    """A repository created by CreateRepositoryFromBundle (client-streaming, 3 MB+)."""
    repo = repository(relative_path)
    await gitrepo.seed(channel, repo, source, tmp_path)
    return repo


def _heads_and_tags(refs: dict[str, str]) -> dict[str, str]:
    return {n: o for n, o in refs.items() if n.startswith(("refs/heads/", "refs/tags/"))}


async def test_create_from_bundle_reaches_every_replica(
    healthy: Cluster, seeded: shared_pb2.Repository, source: Path
) -> None:
    address = healthy.proxies[0].address
    expected = _heads_and_tags(gitrepo.refs(source))
    on_disk = helpers.replica_refs(healthy, address, seeded.relative_path)
    assert set(on_disk) == {"node1", "node2", "node3"}
    for node, refs in on_disk.items():
        assert _heads_and_tags(refs) == expected, node
    meta = helpers.metadata(address, seeded.relative_path)
    assert meta.generation == 0
    assert set(helpers.generations(meta).values()) == {0}
    assert len(set(helpers.checksums(address, seeded.relative_path).values())) == 1


async def test_unary_and_server_streaming_reads(
    channel: grpc.aio.Channel, seeded: shared_pb2.Repository, source: Path
) -> None:
    head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    found = await commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
        commit_pb2.FindCommitRequest(repository=seeded, revision=b"main~1")
    )
    assert found.commit.id == gitrepo.git("rev-parse", "main~1", cwd=source).strip()
    assert found.commit.subject == b"commit 4"

    listed: dict[str, str] = {}
    async for page in ref_pb2_grpc.RefServiceStub(channel).ListRefs(
        ref_pb2.ListRefsRequest(repository=seeded, patterns=[b"refs/"])
    ):
        listed.update({r.name.decode(): r.target for r in page.references})
    assert listed == gitrepo.refs(source)
    assert listed["refs/heads/main"] == head

    blob_oid = gitrepo.git("rev-parse", "main:blob.bin", cwd=source).strip()
    chunks = []
    size = -1
    async for response in blob_pb2_grpc.BlobServiceStub(channel).GetBlob(
        blob_pb2.GetBlobRequest(repository=seeded, oid=blob_oid, limit=-1)
    ):
        if response.oid:
            size = response.size
        chunks.append(response.data)
    data = b"".join(chunks)
    assert len(chunks) > 1  # really streamed
    assert size == len(data) == 3 * 1024 * 1024
    assert data == (source / "blob.bin").read_bytes()


async def test_update_references_writes_every_replica(
    healthy: Cluster, channel: grpc.aio.Channel, seeded: shared_pb2.Repository, source: Path
) -> None:
    address = healthy.proxies[0].address
    first = gitrepo.git("rev-list", "--max-parents=0", "main", cwd=source).strip()
    head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    Update = ref_pb2.UpdateReferencesRequest.Update

    async def updates() -> AsyncIterator[ref_pb2.UpdateReferencesRequest]:
        yield ref_pb2.UpdateReferencesRequest(
            repository=seeded,
            updates=[
                Update(reference=b"refs/heads/u1", old_object_id=b"", new_object_id=first.encode())
            ],
        )
        # The second message carries more updates of the same transaction.
        yield ref_pb2.UpdateReferencesRequest(
            updates=[
                Update(reference=b"refs/heads/u2", new_object_id=head.encode()),
                Update(
                    reference=b"refs/heads/feature",
                    old_object_id=gitrepo.git("rev-parse", "feature", cwd=source).strip().encode(),
                    new_object_id=first.encode(),
                ),
            ]
        )

    await ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(updates())
    for node, refs in helpers.replica_refs(healthy, address, seeded.relative_path).items():
        assert refs["refs/heads/u1"] == first, node
        assert refs["refs/heads/u2"] == head, node
        assert refs["refs/heads/feature"] == first, node
    meta = helpers.metadata(address, seeded.relative_path)
    assert meta.generation == 1
    assert helpers.generations(meta) == {"node1": 1, "node2": 1, "node3": 1}


async def test_user_commit_files_commits_on_every_replica(
    healthy: Cluster, channel: grpc.aio.Channel, seeded: shared_pb2.Repository, source: Path
) -> None:
    address = healthy.proxies[0].address
    Action = operations_pb2.UserCommitFilesActionHeader
    header = operations_pb2.UserCommitFilesRequestHeader(
        repository=seeded,
        user=shared_pb2.User(gl_id="user-1", name=b"Jane Doe", email=b"jane@example.com"),
        branch_name=b"main",
        commit_message=b"add notes through the proxy\n",
        # The start repository names the target by its virtual address.
        start_repository=seeded,
        start_branch_name=b"main",
    )
    body = b"x" * (200 * 1024)

    async def requests() -> AsyncIterator[operations_pb2.UserCommitFilesRequest]:
        yield operations_pb2.UserCommitFilesRequest(header=header)
        yield operations_pb2.UserCommitFilesRequest(
            action=operations_pb2.UserCommitFilesAction(
                header=Action(action=Action.CREATE, file_path=b"docs/notes.txt")
            )
        )
        for offset in range(0, len(body), 64 * 1024):
            yield operations_pb2.UserCommitFilesRequest(
                action=operations_pb2.UserCommitFilesAction(
                    content=body[offset : offset + 64 * 1024]
                )
            )

    response = await operations_pb2_grpc.OperationServiceStub(channel).UserCommitFiles(requests())
    new = response.branch_update.commit_id
    assert len(new) == 40
    old_head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    for node, path in helpers.replica_dirs(healthy, address, seeded.relative_path).items():
        assert gitrepo.refs(path)["refs/heads/main"] == new, node
        assert gitrepo.git("rev-parse", f"{new}^", cwd=path).strip() == old_head, node
        assert gitrepo.git("cat-file", "-s", f"{new}:docs/notes.txt", cwd=path).strip() == str(
            len(body)
        )
    assert helpers.metadata(address, seeded.relative_path).generation == 1


async def test_start_repository_elsewhere_is_refused(
    healthy: Cluster, channel: grpc.aio.Channel, seeded: shared_pb2.Repository
) -> None:
    """A start repository that is another repository cannot be served from the
    target's replica; the proxy refuses it rather than letting a node mistake it
    for the target."""
    address = healthy.proxies[0].address
    before = helpers.replica_refs(healthy, address, seeded.relative_path)
    header = operations_pb2.UserCommitFilesRequestHeader(
        repository=seeded,
        user=shared_pb2.User(gl_id="user-1", name=b"Jane", email=b"jane@example.com"),
        branch_name=b"main",
        commit_message=b"m\n",
        start_repository=repository("proxy/some-other.git"),
        start_branch_name=b"main",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await operations_pb2_grpc.OperationServiceStub(channel).UserCommitFiles(
            iter([operations_pb2.UserCommitFilesRequest(header=header)])
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert helpers.replica_refs(healthy, address, seeded.relative_path) == before


def test_git_push_and_clone_through_the_proxy(
    healthy: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    """SSHReceivePack (git push) lands on all 3 replicas with equal checksums and
    generations; SSHUploadPack (git clone, protocol v0 and v2) reads it back."""
    address = healthy.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(
        address, relative_path, source, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"
    )
    expected = _heads_and_tags(gitrepo.refs(source))

    meta = helpers.metadata(address, relative_path)
    assert meta.generation == 1
    assert helpers.generations(meta) == {"node1": 1, "node2": 1, "node3": 1}
    sums = helpers.checksums(address, relative_path)
    assert set(sums) == {"node1", "node2", "node3"}
    assert len(set(sums.values())) == 1 and "" not in sums.values()
    for node, refs in helpers.replica_refs(healthy, address, relative_path).items():
        assert _heads_and_tags(refs) == expected, node

    for version in ("0", "2"):
        clone = tmp_path / f"clone-v{version}"
        # Through the other proxy: both serve every repository.
        helpers.ok(
            helpers.run_git(
                "-c",
                f"protocol.version={version}",
                "clone",
                "--mirror",
                helpers.url(healthy.proxies[1].address, relative_path),
                str(clone),
            )
        )
        assert _heads_and_tags(gitrepo.refs(clone)) == expected
        gitrepo.git("fsck", "--strict", cwd=clone)

    # A second push updates main everywhere: generation 2 on every replica.
    work = tmp_path / "work"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, relative_path), str(work)))
    new = helpers.commit(work, "second.txt")
    helpers.ok(helpers.run_git("push", "origin", "main", cwd=work))
    meta = helpers.metadata(address, relative_path)
    assert meta.generation == 2
    assert helpers.generations(meta) == {"node1": 2, "node2": 2, "node3": 2}
    for node, refs in helpers.replica_refs(healthy, address, relative_path).items():
        assert refs["refs/heads/main"] == new, node
    assert len(set(helpers.checksums(address, relative_path).values())) == 1
