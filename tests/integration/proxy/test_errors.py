"""Bad input to the proxy gets a clear status, and the proxy keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.gitaly import (
    commit_pb2,
    commit_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

Code = grpc.StatusCode


@pytest.fixture
async def channel(healthy: Cluster) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(healthy.proxies[0].address) as ch:
        yield ch


@pytest.fixture
async def existing(
    channel: grpc.aio.Channel, source: Path, relative_path: str, tmp_path: Path
) -> shared_pb2.Repository:
    repo = repository(relative_path)
    await gitrepo.seed(channel, repo, source, tmp_path)
    return repo


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


def find_commit(channel: grpc.aio.Channel, repo: shared_pb2.Repository) -> object:
    return commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
        commit_pb2.FindCommitRequest(repository=repo, revision=b"main"), timeout=10
    )


def update_ref(channel: grpc.aio.Channel, repo: shared_pb2.Repository) -> object:
    request = ref_pb2.UpdateReferencesRequest(
        repository=repo,
        updates=[
            ref_pb2.UpdateReferencesRequest.Update(
                reference=b"refs/heads/x", new_object_id=b"1" * 40
            )
        ],
    )
    return ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(iter([request]), timeout=10)


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    for method in ("/gitaly.CommitService/NoSuchMethod", "/no.Such/Service"):
        call = channel.unary_unary(method)(b"", timeout=10)
        assert await code_of(call) == Code.UNIMPLEMENTED


async def test_unknown_virtual_storage(
    channel: grpc.aio.Channel, existing: shared_pb2.Repository
) -> None:
    other = shared_pb2.Repository(storage_name="nope", relative_path=existing.relative_path)
    assert await code_of(find_commit(channel, other)) == Code.INVALID_ARGUMENT
    assert await code_of(update_ref(channel, other)) == Code.INVALID_ARGUMENT
    # A node's name is not a virtual storage either.
    node = shared_pb2.Repository(storage_name="node1", relative_path=existing.relative_path)
    assert await code_of(find_commit(channel, node)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "relative_path",
    ["../outside.git", "a/../../outside.git", "/etc/passwd", "a\x00b.git", "", "+gitquorum/tmp"],
    ids=["dotdot", "nested dotdot", "absolute", "nul", "empty", "internal"],
)
async def test_bad_relative_paths(channel: grpc.aio.Channel, relative_path: str) -> None:
    repo = repository(relative_path)
    assert await code_of(find_commit(channel, repo)) == Code.INVALID_ARGUMENT
    assert await code_of(update_ref(channel, repo)) == Code.INVALID_ARGUMENT
    create = repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
        repository_pb2.CreateRepositoryRequest(repository=repo), timeout=10
    )
    assert await code_of(create) == Code.INVALID_ARGUMENT


async def test_garbage_request_bytes(channel: grpc.aio.Channel) -> None:
    for method in (
        "/gitaly.CommitService/FindCommit",
        "/gitaly.RepositoryService/CreateRepository",
    ):
        call = channel.unary_unary(method)(b"\xff\xff\xff\xff garbage", timeout=10)
        assert await code_of(call) == Code.INVALID_ARGUMENT
    stream = channel.stream_unary("/gitaly.RefService/UpdateReferences")(
        iter([b"\x0a\xff\xff"]), timeout=10
    )
    assert await code_of(stream) == Code.INVALID_ARGUMENT


async def test_missing_repository_message(channel: grpc.aio.Channel) -> None:
    call = commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
        commit_pb2.FindCommitRequest(revision=b"main"), timeout=10
    )
    assert await code_of(call) == Code.INVALID_ARGUMENT


async def test_empty_client_stream(channel: grpc.aio.Channel) -> None:
    call = ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(iter([]), timeout=10)
    assert await code_of(call) == Code.INVALID_ARGUMENT
    raw = channel.stream_stream("/gitaly.SSHService/SSHReceivePack")(iter([]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in raw:
            pass
    assert info.value.code() == Code.INVALID_ARGUMENT


async def test_unknown_repository_is_not_found(channel: grpc.aio.Channel) -> None:
    unknown = repository("proxy/never-created.git")
    assert await code_of(find_commit(channel, unknown)) == Code.NOT_FOUND  # accessor
    assert await code_of(update_ref(channel, unknown)) == Code.NOT_FOUND  # mutator
    write_ref = repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
        repository_pb2.WriteRefRequest(repository=unknown, ref=b"refs/heads/a", revision=b"1" * 40),
        timeout=10,
    )
    assert await code_of(write_ref) == Code.NOT_FOUND
    remove = repository_pb2_grpc.RepositoryServiceStub(channel).RemoveRepository(
        repository_pb2.RemoveRepositoryRequest(repository=unknown), timeout=10
    )
    assert await code_of(remove) == Code.NOT_FOUND
    exists = await repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
        repository_pb2.RepositoryExistsRequest(repository=unknown), timeout=10
    )
    assert exists.exists is False


async def test_create_existing_is_already_exists(
    healthy: Cluster, channel: grpc.aio.Channel, existing: shared_pb2.Repository
) -> None:
    address = healthy.proxies[0].address
    before = helpers.metadata(address, existing.relative_path)
    stub = repository_pb2_grpc.RepositoryServiceStub(channel)
    call = stub.CreateRepository(repository_pb2.CreateRepositoryRequest(repository=existing))
    assert await code_of(call) == Code.ALREADY_EXISTS
    after = helpers.metadata(address, existing.relative_path)
    assert (after.repository_id, after.generation) == (before.repository_id, before.generation)
    # Through the other proxy as well.
    async with grpc.aio.insecure_channel(healthy.proxies[1].address) as other:
        call = repository_pb2_grpc.RepositoryServiceStub(other).CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=existing)
        )
        assert await code_of(call) == Code.ALREADY_EXISTS


async def test_node_errors_are_relayed(
    channel: grpc.aio.Channel, existing: shared_pb2.Repository
) -> None:
    """A node's own status reaches the client unchanged (accessor and mutator)."""
    missing = commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
        commit_pb2.FindCommitRequest(repository=existing, revision=b"no-such-branch")
    )
    assert (await missing).HasField("commit") is False
    bad = ref_pb2.UpdateReferencesRequest(
        repository=existing,
        updates=[
            ref_pb2.UpdateReferencesRequest.Update(reference=b"refs/heads/x", new_object_id=b"zz")
        ],
    )
    call = ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(iter([bad]))
    assert await code_of(call) == Code.INVALID_ARGUMENT


async def test_proxy_still_serving_after_bad_input(
    healthy: Cluster, channel: grpc.aio.Channel, existing: shared_pb2.Repository, source: Path
) -> None:
    methods = ("/gitaly.CommitService/FindCommit", "/gitaly.RefService/UpdateReferences")
    payloads = (b"", b"\xff", b"\x0a\x02\x0a\x00", bytes(range(256)))
    # The session's cluster has served other tests (concurrent pushes whose
    # vote was aborted end INTERNAL, as on a node): count this test's calls only.
    before = helpers.scrape(healthy.proxies[0].metrics_port)
    for method in methods:
        for payload in payloads:
            if method.endswith("UpdateReferences"):
                call = channel.stream_unary(method)(iter([payload]), timeout=10)
            else:
                call = channel.unary_unary(method)(payload, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await call
    assert all(p.alive() for p in healthy.proxies)
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    found = await find_commit(channel, existing)  # type: ignore[misc]
    assert found.commit.id == gitrepo.git("rev-parse", "main", cwd=source).strip()
    after = helpers.scrape(healthy.proxies[0].metrics_port)

    def counted(method: str, code: str) -> float:
        return helpers.sample(
            after, "gitquorum_rpc_requests_total", method=method, code=code
        ) - helpers.sample(before, "gitquorum_rpc_requests_total", method=method, code=code)

    # Every bad request was counted with its own status; none as an internal error.
    for method in methods:
        assert counted(method, "INVALID_ARGUMENT") == len(payloads), method
        assert counted(method, "INTERNAL") == 0, method
