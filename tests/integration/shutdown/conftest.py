"""A real cluster for drain tests: etcd, three nodes and two proxies.

Proxies drain within a short grace period here (5 s) so a drain cut short is
quick to test. Every test starts with every process up and every node healthy.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.queue import ReplicationJob, ReplicationQueue
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster, ProxyProcess
from tests.harness.node import NodeProcess
from tests.integration.proxy.helpers import repository, wait_all_healthy

GRACE = 5.0


@pytest.fixture(scope="module")
def drain_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("drain"),
        nodes_count=3,
        proxies_count=2,
        proxy_settings={
            "graceful_timeout": f"{GRACE}s",
            "replication": {"reconcile_interval": "1s"},
        },
    ).start()
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(drain_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    for process in [*drain_cluster.nodes, *drain_cluster.proxies]:
        if not process.alive():
            process.start()
    wait_all_healthy(drain_cluster, timeout=60)
    yield drain_cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(drain_cluster.log_tail())


def sigterm(process: ProxyProcess | NodeProcess) -> float:
    """Send SIGTERM without waiting; returns when it was sent (monotonic)."""
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    return time.monotonic()


def exit_code(process: ProxyProcess | NodeProcess, within: float) -> int:
    assert process.proc is not None
    return process.proc.wait(within)


def seed(address: str, relative: str, source: Path, scratch: Path) -> None:
    import asyncio

    async def run() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            await gitrepo.seed(channel, repository(relative), source, scratch)

    asyncio.run(run())


def write_ref(address: str, relative: str, ref: str, oid: str, timeout: float = 15.0) -> None:
    with grpc.insecure_channel(address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
            repository_pb2.WriteRefRequest(
                repository=repository(relative), ref=ref.encode(), revision=oid.encode()
            ),
            timeout=timeout,
        )


def jobs(cluster: Cluster) -> list[ReplicationJob]:
    """The replication queue, read from etcd."""
    import asyncio

    assert cluster.etcd is not None

    async def read() -> list[ReplicationJob]:
        store = EtcdStore(EtcdConfig(endpoints=cluster.etcd.endpoints))  # type: ignore[union-attr]
        await store.connect()
        try:
            return await ReplicationQueue(store, Keyspace(cluster="default")).jobs()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("drain-source") / "source", commits=3, binary_size=2 * 1024 * 1024
    )
