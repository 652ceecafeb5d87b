"""A request message over ``limits.max_message_size`` fails RESOURCE_EXHAUSTED; the server lives on.

Through the proxy and directly on a node, for a unary request and for one
message of a client stream, each limited to 2 MiB here.
"""

from __future__ import annotations

import grpc
import pytest

from gitquorum.gitaly import (
    commit_pb2,
    commit_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.harness.cluster import Cluster
from tests.harness.node import NodeProcess
from tests.integration.limits.conftest import MAX_MESSAGE, new_repository

TOO_BIG = MAX_MESSAGE + 512 * 1024


async def _limit_holds(address: str) -> None:
    repo = new_repository(address)
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 4 * MAX_MESSAGE)]
    ) as channel:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        # Unary: a WriteRef whose revision alone is over the limit.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=repo, ref=b"refs/heads/big", revision=b"x" * TOO_BIG
                ),
                timeout=30,
            )
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value
        assert "larger than max" in (error.value.details() or "")

        # Streaming: the second message of a bundle upload is over the limit.
        async def bundle() -> object:
            target = shared_pb2.Repository(
                storage_name=repo.storage_name, relative_path=repo.relative_path + ".new"
            )
            yield repository_pb2.CreateRepositoryFromBundleRequest(repository=target, data=b"")
            yield repository_pb2.CreateRepositoryFromBundleRequest(data=b"\0" * TOO_BIG)

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreateRepositoryFromBundle(bundle(), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value

        # Just under the limit is accepted and judged on its merits: no such
        # revision, said in a message cut short enough to reach the client
        # (quoting the whole revision, it would not); the server still serves
        # on the same channel.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=repo, ref=b"refs/heads/big", revision=b"x" * (MAX_MESSAGE - 4096)
                ),
                timeout=30,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
        details = error.value.details() or ""
        assert details.startswith("revision not found") and "bytes cut" in details
        # A field git takes as an argument, over the kernel's limit for one
        # (128 KiB): the request's fault, said as such.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            commits = commit_pb2_grpc.CommitServiceStub(channel).ListCommits(
                commit_pb2.ListCommitsRequest(repository=repo, revisions=["x" * 200_000]),
                timeout=30,
            )
            async for _ in commits:
                pass
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
        assert "too large for git's command line" in (error.value.details() or "")
        exists = await stub.RepositoryExists(
            repository_pb2.RepositoryExistsRequest(repository=repo), timeout=30
        )
        assert exists.exists


async def test_message_size_through_the_proxy(cluster: Cluster) -> None:
    await _limit_holds(cluster.proxies[0].address)
    assert cluster.proxies[0].alive()


async def test_message_size_on_a_node(limited_node: NodeProcess) -> None:
    await _limit_holds(limited_node.address)
    assert limited_node.alive()
