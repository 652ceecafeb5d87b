"""Clusters and nodes with tight limits, so a test can reach every one of them quickly.

``limited`` is a real cluster (etcd, three nodes, one proxy) whose proxy allows
one mutator and one expensive read per repository, queues two more for one
second, and takes messages of at most 2 MiB. ``limited_node`` is a lone node
with the same limits in its own configuration file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
import yaml

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.harness.etcd import free_ports
from tests.harness.node import NodeProcess
from tests.integration.proxy.helpers import wait_all_healthy

MAX_MESSAGE = 2 * 1024 * 1024
LIMITS = {
    "max_message_size": MAX_MESSAGE,
    "mutator_concurrency": 1,
    "read_concurrency": 1,
    "max_queued": 2,
    "queue_timeout": "1s",
}


@pytest.fixture(scope="session")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("limited"),
        nodes_count=3,
        proxy_settings={"limits": LIMITS, "replication": {"reconcile_interval": "1s"}},
    )
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(limited: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    for node in limited.nodes:
        if not node.alive():
            node.start()
    for proxy in limited.proxies:
        proxy.resume()
    wait_all_healthy(limited)
    yield limited
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(limited.log_tail())


@pytest.fixture(scope="session")
def limited_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("limited-node")
    config = base / "node.yaml"
    [port] = free_ports(1)
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "storages": [{"name": "default", "path": str(base / "storage")}],
                "limits": LIMITS,
            }
        )
    )
    node = NodeProcess(
        "default", base / "storage", base / "logs", extra_args=["--config", str(config)]
    ).start()
    yield node
    node.terminate()


def repository(relative_path: str) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=relative_path)


def new_repository(address: str, prefix: str = "limits") -> shared_pb2.Repository:
    """A fresh repository (with one commit, so it advertises a ref) behind ``address``."""
    repo = repository(f"{prefix}/{uuid.uuid4().hex}.git")
    with grpc.insecure_channel(address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=repo), timeout=30
        )
    return repo
