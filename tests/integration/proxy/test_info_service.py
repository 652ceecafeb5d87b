"""PraefectInfoService on the proxy: replicas, metadata, authoritative storage,
replication factor and verification marks (Dataloss under faults: test_faults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

P = praefect_pb2


@pytest.fixture
def info(healthy: Cluster) -> Iterator[praefect_pb2_grpc.PraefectInfoServiceStub]:
    with grpc.insecure_channel(healthy.proxies[1].address) as channel:
        yield praefect_pb2_grpc.PraefectInfoServiceStub(channel)


@pytest.fixture
def pushed(healthy: Cluster, source: Path, relative_path: str) -> str:
    address = healthy.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main", "feature", "v1.0")
    helpers.wait_converged(address, relative_path)
    return relative_path


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


def test_repository_replicas(
    healthy: Cluster, info: praefect_pb2_grpc.PraefectInfoServiceStub, pushed: str
) -> None:
    answer = info.RepositoryReplicas(P.RepositoryReplicasRequest(repository=repository(pushed)))
    meta = helpers.metadata(healthy.proxies[0].address, pushed)
    assert answer.primary.repository.storage_name == meta.primary
    assert answer.primary.repository.relative_path == meta.replica_path
    assert sorted(r.repository.storage_name for r in answer.replicas) == sorted(
        n.name for n in healthy.nodes if n.name != meta.primary
    )
    sums = {answer.primary.checksum, *(r.checksum for r in answer.replicas)}
    assert len(sums) == 1 and len(sums.pop()) == 40
    unknown = P.RepositoryReplicasRequest(repository=repository("proxy/none.git"))
    assert _code(lambda: info.RepositoryReplicas(unknown)) == grpc.StatusCode.NOT_FOUND


def test_get_repository_metadata_by_id_and_path(
    healthy: Cluster, info: praefect_pb2_grpc.PraefectInfoServiceStub, pushed: str
) -> None:
    by_path = info.GetRepositoryMetadata(
        P.GetRepositoryMetadataRequest(
            path=P.GetRepositoryMetadataRequest.Path(
                virtual_storage="default", relative_path=pushed
            )
        )
    )
    by_id = info.GetRepositoryMetadata(
        P.GetRepositoryMetadataRequest(repository_id=by_path.repository_id)
    )
    for answer in (by_path, by_id):
        assert answer.relative_path == pushed
        assert answer.virtual_storage == "default"
        assert answer.generation == 1
        assert answer.replica_path.startswith("@cluster/repositories/")
        assert answer.primary in {n.name for n in healthy.nodes}
        assert {(r.storage, r.assigned, r.generation, r.healthy) for r in answer.replicas} == {
            (n.name, True, 1, True) for n in healthy.nodes
        }
        assert [r.valid_primary for r in answer.replicas] == [True, True, True]
    assert by_id.repository_id == by_path.repository_id
    assert by_id.replica_path == by_path.replica_path
    assert by_id.primary == by_path.primary
    assert (healthy.replica_dir(by_id.primary, by_id.replica_path) / "HEAD").exists()

    missing = P.GetRepositoryMetadataRequest(repository_id=10**12)
    assert _code(lambda: info.GetRepositoryMetadata(missing)) == grpc.StatusCode.NOT_FOUND
    empty = P.GetRepositoryMetadataRequest()
    assert _code(lambda: info.GetRepositoryMetadata(empty)) == grpc.StatusCode.INVALID_ARGUMENT


def test_dataloss_is_empty_when_healthy(info: praefect_pb2_grpc.PraefectInfoServiceStub) -> None:
    pages = list(info.Dataloss(P.DatalossRequest(virtual_storage="default")))
    assert [r for page in pages for r in page.repositories] == []
    bad = P.DatalossRequest(virtual_storage="nope")
    assert _code(lambda: list(info.Dataloss(bad))) == grpc.StatusCode.INVALID_ARGUMENT


def test_set_authoritative_storage(
    healthy: Cluster, info: praefect_pb2_grpc.PraefectInfoServiceStub, pushed: str, source: Path
) -> None:
    """A secondary declared authoritative wins: its content (here a ref written
    only on its disk) is replicated to the others and it becomes the primary."""
    address = healthy.proxies[0].address
    meta = helpers.metadata(address, pushed)
    chosen = sorted(r.storage for r in meta.replicas if r.storage != meta.primary)[0]
    replica = healthy.replica_dir(chosen, meta.replica_path)
    older = gitrepo.git("rev-parse", "main~1", cwd=source).strip()
    gitrepo.git("update-ref", "refs/heads/only-here", older, cwd=replica)

    info.SetAuthoritativeStorage(
        P.SetAuthoritativeStorageRequest(
            virtual_storage="default", relative_path=pushed, authoritative_storage=chosen
        )
    )
    after = helpers.metadata(address, pushed)
    assert after.primary == chosen
    assert after.generation == meta.generation + 1
    assert helpers.generations(after)[chosen] == after.generation

    helpers.wait_converged(address, pushed)
    for node, refs in helpers.replica_refs(healthy, address, pushed).items():
        assert refs["refs/heads/only-here"] == older, node

    bad = P.SetAuthoritativeStorageRequest(
        virtual_storage="default", relative_path=pushed, authoritative_storage="nope"
    )
    assert _code(lambda: info.SetAuthoritativeStorage(bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_set_replication_factor_down_and_up(
    healthy: Cluster,
    info: praefect_pb2_grpc.PraefectInfoServiceStub,
    pushed: str,
    tmp_path: Path,
) -> None:
    address = healthy.proxies[0].address
    meta = helpers.metadata(address, pushed)
    shrunk = info.SetReplicationFactor(
        P.SetReplicationFactorRequest(
            virtual_storage="default", relative_path=pushed, replication_factor=1
        )
    )
    assert list(shrunk.storages) == [meta.primary]
    after = helpers.metadata(address, pushed)
    assert after.primary == meta.primary
    assert {r.storage for r in after.replicas if r.assigned} == {meta.primary}

    # A write now reaches the primary only.
    work = tmp_path / "work"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, pushed), str(work)))
    new = helpers.commit(work, "rf1.txt")
    helpers.ok(helpers.run_git("push", "origin", "main", cwd=work))
    written = helpers.metadata(address, pushed)
    gens = helpers.generations(written)
    assert gens[meta.primary] == written.generation == meta.generation + 1
    assert all(g < written.generation for n, g in gens.items() if n != meta.primary)

    grown = info.SetReplicationFactor(
        P.SetReplicationFactorRequest(
            virtual_storage="default", relative_path=pushed, replication_factor=3
        )
    )
    assert sorted(grown.storages) == sorted(n.name for n in healthy.nodes)
    assert grown.storages[0] == meta.primary
    repaired = helpers.wait_converged(address, pushed)
    assert repaired.meta.primary == meta.primary
    for node, refs in helpers.replica_refs(healthy, address, pushed).items():
        assert refs["refs/heads/main"] == new, node

    for factor in (0, 4):
        bad = P.SetReplicationFactorRequest(
            virtual_storage="default", relative_path=pushed, replication_factor=factor
        )
        assert _code(lambda b=bad: info.SetReplicationFactor(b)) == grpc.StatusCode.INVALID_ARGUMENT


def test_mark_unverified(
    healthy: Cluster, info: praefect_pb2_grpc.PraefectInfoServiceStub, pushed: str
) -> None:
    address = healthy.proxies[0].address

    def verified() -> bool:
        return all(r.HasField("verified_at") for r in helpers.metadata(address, pushed).replicas)

    wait_for(verified, 30, 0.2, "the verifier to check every replica")
    meta = helpers.metadata(address, pushed)
    marked = info.MarkUnverified(P.MarkUnverifiedRequest(repository_id=meta.repository_id))
    assert marked.replicas_marked == 3
    # The verifier checks them again (never-verified replicas come first).
    wait_for(verified, 30, 0.2, "the verifier to check them again")

    node = P.MarkUnverifiedRequest.Storage(virtual_storage="default", storage=meta.primary)
    assert info.MarkUnverified(P.MarkUnverifiedRequest(storage=node)).replicas_marked >= 1
    whole = info.MarkUnverified(P.MarkUnverifiedRequest(virtual_storage="default"))
    assert whole.replicas_marked >= 2  # the other two replicas of this repository at least

    unknown = P.MarkUnverifiedRequest.Storage(virtual_storage="default", storage="nope")
    assert (
        _code(lambda: info.MarkUnverified(P.MarkUnverifiedRequest(storage=unknown)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        _code(lambda: info.MarkUnverified(P.MarkUnverifiedRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
