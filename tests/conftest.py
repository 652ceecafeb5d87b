"""Fixtures shared by every tier.

``target`` gives a target to run storage-node tests against: a real node
process (default) or, with GITQUORUM_TEST_THROUGH_PROXY=1, a proxy in front
of three nodes (one session-scoped ``Cluster``). Tests address it only through
``target.address``, ``target.storage`` and ``target.repository(rel)``; through
the proxy, ``target.disk_path`` is the primary's replica directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc, shared_pb2
from tests.harness.node import NodeProcess

if TYPE_CHECKING:
    from tests.harness.cluster import Cluster

THROUGH_PROXY = os.environ.get("GITQUORUM_TEST_THROUGH_PROXY") == "1"


@dataclass
class Target:
    """Where storage-node tests send their RPCs."""

    address: str
    storage: str
    # Disk root of the storage when the target is one node; None through a proxy.
    storage_path: Path | None
    nodes: list[NodeProcess]
    # Set through the proxy: resolves a repository to its primary's replica directory.
    cluster: Cluster | None = None

    def repository(self, relative_path: str | None = None) -> shared_pb2.Repository:
        rel = relative_path or f"test/{uuid.uuid4().hex}.git"
        return shared_pb2.Repository(storage_name=self.storage, relative_path=rel)

    def disk_path(self, repo: shared_pb2.Repository) -> Path:
        """Where a repository lives on disk: on the node, or the primary's replica."""
        if self.cluster is not None:
            return primary_replica_dir(self.cluster, self.address, repo)
        if self.storage_path is None:
            raise RuntimeError("no single disk path for this target")
        return self.storage_path / repo.relative_path


def primary_replica_dir(cluster: Cluster, address: str, repo: shared_pb2.Repository) -> Path:
    """The primary's replica directory, looked up on the proxy (synchronously:
    tests call ``disk_path`` from plain and async code alike)."""
    with grpc.insecure_channel(address) as channel:
        metadata = praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=repo.storage_name, relative_path=repo.relative_path
                )
            ),
            timeout=10,
        )
    return cluster.replica_dir(metadata.primary, metadata.replica_path)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def node_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("node")
    node = NodeProcess("default", base / "storage", base / "logs").start()
    yield node
    node.terminate()


@pytest.fixture(scope="session")
def proxy_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes behind one proxy, shared by every test run through the proxy."""
    from tests.harness.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("proxy-target"), nodes_count=3).start()
    yield cluster
    cluster.close()


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return bool(report is not None and report.failed)


if THROUGH_PROXY:

    @pytest.fixture
    def target(request: pytest.FixtureRequest) -> Iterator[Target]:
        cluster: Cluster = request.getfixturevalue("proxy_cluster")
        for node in cluster.nodes:
            if not node.alive():
                node.start()
        proxy = cluster.proxies[0]
        yield Target(proxy.address, "default", None, cluster.nodes, cluster)
        if _failed(request):
            print(cluster.log_tail())

else:

    @pytest.fixture
    def target(node_session: NodeProcess, request: pytest.FixtureRequest) -> Iterator[Target]:
        if not node_session.alive():
            node_session.start()
        yield Target(
            node_session.address, node_session.name, node_session.storage_path, [node_session]
        )
        if _failed(request):
            print(f"--- node log ---\n{node_session.log_tail()}")


@pytest.fixture
async def channel(target: Target) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target.address) as ch:
        yield ch


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
