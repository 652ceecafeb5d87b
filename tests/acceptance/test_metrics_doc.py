"""docs/metrics.md against what a real cluster exposes, in both directions.

A real cluster (etcd, three nodes, one proxy) and an HTTP gateway go through
the situations that make every conditional metric appear: traffic, a replica
missing on disk, a drained node, a node down while writes continue
(replication queue, outdated replicas, health consensus), the primary down
(failover), every node down (unavailable repositories), all back
(replication jobs run), etcd frozen (etcd errors). Every component's
/metrics is scraped along the way. Then, per component,
the documented metric names must equal the exposed ones, and every documented
metric must have had samples with exactly the documented labels and type.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.operator_state import OperatorState
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc, shared_pb2
from tests.acceptance.cluster_ops import Gateway, metadata, until, write_ref
from tests.acceptance.metrics_doc import COMPONENTS, Exposition, documented_metrics, scrape
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster

RELATIVE_PATH = "metrics/doc.git"
MISSING_PATH = "metrics/missing.git"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster").start()
    with cluster.reporting():
        yield cluster


@pytest.fixture
def gateway(cluster: Cluster, tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway.start(cluster, tmp_path)
    yield gateway
    gateway.close()


class Observer:
    """Scrapes every component and remembers what each exposed."""

    def __init__(self, cluster: Cluster, gateway: Gateway) -> None:
        self.cluster = cluster
        self.gateway = gateway
        self.seen = {component: Exposition() for component in COMPONENTS}

    def proxy(self) -> Exposition:
        for proxy in self.cluster.proxies:
            self.seen["proxy"].add(scrape(proxy.metrics_port))
        return self.seen["proxy"]

    def everything(self) -> None:
        self.proxy()
        for node in self.cluster.nodes:
            if node.alive():
                self.seen["node"].add(scrape(node.metrics_port))
        self.seen["http"].add(scrape(self.gateway.port))

    def proxy_sampled(self, *names: str) -> bool:
        return set(names) <= self.proxy().sampled


async def test_documented_metrics_are_exactly_the_exposed_ones(
    cluster: Cluster, gateway: Gateway, tmp_path: Path
) -> None:
    observer = Observer(cluster, gateway)
    source = gitrepo.make_repo(tmp_path / "source", commits=2)
    head = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()
    repo = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=RELATIVE_PATH)

    async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
        # Traffic: a creation, a write, a read, an HTTP ref advertisement.
        await gitrepo.seed(channel, repo, source, tmp_path)
        await write_ref(channel, repo, "refs/heads/w0", head)
        refs = ref_pb2_grpc.RefServiceStub(channel)
        await refs.FindDefaultBranchName(ref_pb2.FindDefaultBranchNameRequest(repository=repo))
        url = f"http://{gateway.address}/{RELATIVE_PATH}/info/refs?service=git-upload-pack"
        assert await asyncio.to_thread(_http_status, url) == 200
        observer.everything()

        # A replica of another repository gone from its node's disk: reads
        # routed to it move on to the other replicas.
        other = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=MISSING_PATH)
        (tmp_path / "missing").mkdir()
        await gitrepo.seed(channel, other, source, tmp_path / "missing")
        meta = await metadata(channel, MISSING_PATH)
        victim = next(r.storage for r in meta.replicas if r.storage != meta.primary)
        shutil.rmtree(cluster.replica_dir(victim, meta.replica_path))
        deadline = asyncio.get_running_loop().time() + 30
        while not observer.proxy_sampled("gitquorum_read_replicas_missing_total"):
            assert asyncio.get_running_loop().time() < deadline, "no read found the replica gone"
            request = ref_pb2.FindDefaultBranchNameRequest(repository=other)
            await refs.FindDefaultBranchName(request, timeout=10)  # never fails

        # An operator drains a node for a moment.
        assert cluster.etcd is not None
        async with EtcdStore(EtcdConfig(endpoints=tuple(cluster.etcd.endpoints))) as store:
            operator = OperatorState(store, Keyspace(cluster="default"))
            assert await operator.drain(VIRTUAL_STORAGE, cluster.nodes[0].name, reason="test")
            await until(
                lambda: observer.proxy_sampled("gitquorum_node_draining"), 10, "a drained node"
            )
            assert await operator.undrain(VIRTUAL_STORAGE, cluster.nodes[0].name)

        primary_name = (await metadata(channel, RELATIVE_PATH)).primary
        primary = cluster.node(primary_name)
        first, second = (n for n in cluster.nodes if n is not primary)

        # A secondary down while writes continue: a job waits for it.
        first.kill()
        await write_ref(channel, repo, "refs/heads/w1", head)
        await until(
            lambda: observer.proxy_sampled(
                "gitquorum_replication_queue_depth",
                "gitquorum_replication_queue_oldest_pending_seconds",
                "gitquorum_outdated_replicas",
            ),
            20,
            "the leader to export the replication gauges",
        )
        # The primary down too: the last up-to-date replica takes over.
        primary.kill()
        await until(lambda: observer.proxy_sampled("gitquorum_failovers_total"), 20, "a failover")
        # Nobody left with the latest generation: the repository is unavailable.
        second.kill()
        await until(
            lambda: observer.proxy_sampled("gitquorum_unavailable_repositories"),
            20,
            "unavailable repositories",
        )
        for node in (primary, first, second):
            node.start()
        # Replication repairs the first secondary: every replica up to date again.
        await until(
            lambda: (
                observer.proxy_sampled("gitquorum_replication_latency_seconds")
                and "gitquorum_outdated_replicas" not in _sampled_now(cluster)
            ),
            30,
            "the replicas to be repaired",
        )
        observer.everything()

    # etcd frozen: requests time out and are counted as errors.
    cluster.etcd.pause(0)
    try:
        await until(
            lambda: observer.proxy_sampled("gitquorum_etcd_request_errors_total"),
            30,
            "etcd errors",
        )
    finally:
        cluster.etcd.resume(0)
    observer.everything()

    documented = documented_metrics()
    for component in COMPONENTS:
        expected = {name for name, doc in documented.items() if component in doc.components}
        exposed = set(observer.seen[component].families)
        assert exposed - expected == set(), f"{component}: exposed but not documented"
        assert expected - exposed == set(), f"{component}: documented but not exposed"
    for name, doc in documented.items():
        views = [observer.seen[c] for c in doc.components]
        assert any(name in view.sampled for view in views), f"{name}: never had a sample"
        for view in views:
            assert view.families[name] == doc.type, f"{name}: type"
        labels = set().union(*(view.labels[name] for view in views))
        assert labels == doc.labels, f"{name}: labels {sorted(labels)} exposed"


def _sampled_now(cluster: Cluster) -> set[str]:
    """Metrics with samples on the proxies right now (not accumulated)."""
    now = Exposition()
    for proxy in cluster.proxies:
        now.add(scrape(proxy.metrics_port))
    return now.sampled


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)
