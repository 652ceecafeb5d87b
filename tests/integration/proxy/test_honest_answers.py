"""A write the secondaries applied is never answered as failed (real etcd, nodes, git).

The primary's git fails while committing a reference update, after the
cluster decided the update (its prepared vote was answered COMMIT), as it does
when the primary's disk fills up between prepare and commit; the secondaries
commit it. The client must get UNAVAILABLE "outcome unknown: ...", the record
must keep the write (the secondaries move to the next generation), and the
write must be readable through the proxy and end up on every replica.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import operations_pb2, operations_pb2_grpc, ref_pb2, ref_pb2_grpc, shared_pb2
from gitquorum.wire.finishing import OUTCOME_UNKNOWN_CODE, OUTCOME_UNKNOWN_PREFIX
from tests.harness import failing_git
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.conftest import SETTINGS
from tests.integration.proxy.helpers import repository

USER = shared_pb2.User(gl_id="user-1", name=b"Jane Doe", email=b"jane@example.com")
CORRELATION = "proxy-honest-answers"


@pytest.fixture(scope="module")
def git_wrapper(tmp_path_factory: pytest.TempPathFactory) -> failing_git.FailingGit:
    return failing_git.install(tmp_path_factory.mktemp("failing-git"))


@pytest.fixture(scope="module")
def honest_cluster(
    tmp_path_factory: pytest.TempPathFactory, git_wrapper: failing_git.FailingGit
) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("honest-cluster"),
        nodes_count=3,
        proxies_count=1,
        proxy_settings=SETTINGS,
        node_env={"GITQUORUM_GIT": str(git_wrapper.script)},
    ).start()
    with cluster.reporting():
        helpers.wait_all_healthy(cluster)
        yield cluster


def _create_branch(address: str, relative_path: str, branch: bytes) -> grpc.RpcError | None:
    with grpc.insecure_channel(address) as channel:
        try:
            operations_pb2_grpc.OperationServiceStub(channel).UserCreateBranch(
                operations_pb2.UserCreateBranchRequest(
                    repository=repository(relative_path),
                    branch_name=branch,
                    user=USER,
                    start_point=b"main",
                ),
                metadata=[("x-gitquorum-correlation-id", CORRELATION)],
                timeout=30,
            )
        except grpc.RpcError as exc:
            return exc
    return None


def _branch_target(address: str, relative_path: str, branch: bytes) -> str:
    with grpc.insecure_channel(address) as channel:
        found = ref_pb2_grpc.RefServiceStub(channel).FindBranch(
            ref_pb2.FindBranchRequest(repository=repository(relative_path), name=branch),
            timeout=10,
        )
    return found.branch.target_commit.id


def test_a_commit_failure_on_the_primary_is_an_unknown_outcome_and_the_write_is_kept(
    honest_cluster: Cluster,
    git_wrapper: failing_git.FailingGit,
    source: Path,
) -> None:
    address = honest_cluster.proxies[0].address
    relative_path = f"honest/{uuid.uuid4().hex}.git"
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main")
    start = helpers.wait_converged(address, relative_path).meta
    primary = start.primary
    secondaries = sorted(r.storage for r in start.replicas if r.storage != primary)
    main = helpers.replica_refs(honest_cluster, address, relative_path)[primary]["refs/heads/main"]

    with git_wrapper.failing_commits(honest_cluster.replica_dir(primary, start.replica_path)):
        error = _create_branch(address, relative_path, b"decided")

    assert error is not None, "the write was acknowledged although the primary failed"
    assert error.code() is OUTCOME_UNKNOWN_CODE, (error.code(), error.details())  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert details.startswith(OUTCOME_UNKNOWN_PREFIX), details
    assert CORRELATION in details, details

    # The record keeps the write: the repository moved to the next generation
    # with the secondaries that provably hold it (a secondary whose prepared
    # vote came after the primary failed is left out and repaired). Every
    # replica recorded there holds it on disk.
    after = helpers.metadata(address, relative_path)
    assert after.generation == start.generation + 1
    holders = {n for n, g in helpers.generations(after).items() if g == after.generation}
    assert holders & set(secondaries), helpers.generations(after)
    on_disk = helpers.replica_refs(honest_cluster, address, relative_path)
    for node in holders:
        assert on_disk[node].get("refs/heads/decided") == main, node
    # A read sees it (reads go to up-to-date replicas only) ...
    assert _branch_target(address, relative_path, b"decided") == main
    # ... and the primary, outdated by the failure, is repaired to hold it too.
    helpers.wait_converged(address, relative_path)
    assert all(
        refs.get("refs/heads/decided") == main
        for refs in helpers.replica_refs(honest_cluster, address, relative_path).values()
    )
