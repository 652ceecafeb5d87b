"""RemoveRepository removes every replica and the repository's record."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc, repository_pb2, repository_pb2_grpc
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository


def test_remove_repository_everywhere(healthy: Cluster, source: Path, relative_path: str) -> None:
    address = healthy.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main")
    meta = helpers.metadata(address, relative_path)
    dirs = helpers.replica_dirs(healthy, address, relative_path)
    assert len(dirs) == 3 and all((d / "HEAD").exists() for d in dirs.values())

    repo = repository(relative_path)
    with grpc.insecure_channel(healthy.proxies[1].address) as channel:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        stub.RemoveRepository(repository_pb2.RemoveRepositoryRequest(repository=repo), timeout=30)
        assert not stub.RepositoryExists(
            repository_pb2.RepositoryExistsRequest(repository=repo), timeout=10
        ).exists
    assert not any(d.exists() for d in dirs.values())

    # The record is gone, for both proxies, by path and by id.
    for proxy in healthy.proxies:
        with grpc.insecure_channel(proxy.address) as channel:
            info = praefect_pb2_grpc.PraefectInfoServiceStub(channel)
            for request in (
                praefect_pb2.GetRepositoryMetadataRequest(
                    path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                        virtual_storage="default", relative_path=relative_path
                    )
                ),
                praefect_pb2.GetRepositoryMetadataRequest(repository_id=meta.repository_id),
            ):
                with pytest.raises(grpc.RpcError) as exc:
                    info.GetRepositoryMetadata(request, timeout=10)
                assert exc.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            exists = repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
                repository_pb2.RepositoryExistsRequest(repository=repo), timeout=10
            )
            assert exists.exists is False

    # The path is free again: a new repository (new id, new replicas) can take it.
    helpers.create(address, relative_path)
    again = helpers.metadata(address, relative_path)
    assert again.repository_id != meta.repository_id
    assert again.generation == 0
    helpers.wait_converged(address, relative_path)
