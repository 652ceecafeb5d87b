"""Reads are spread over the up-to-date replicas, or pinned to the primary on request."""

from __future__ import annotations

from pathlib import Path

import grpc

from gitquorum.gitaly import commit_pb2, commit_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

READS = "gitquorum_read_distribution_total"
PRIMARY_ONLY = (("gitaly-route-repository-accessor-policy", "primary-only"),)


def _per_node(cluster: Cluster) -> dict[str, float]:
    text = helpers.scrape(cluster.proxies[0].metrics_port)
    return {n.name: helpers.sample(text, READS, node=n.name) for n in cluster.nodes}


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {node: after[node] - before[node] for node in after}


async def test_reads_are_spread_and_primary_only_pins_them(
    healthy: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    address = healthy.proxies[0].address
    repo = repository(relative_path)
    head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    async with grpc.aio.insecure_channel(address) as channel:
        await gitrepo.seed(channel, repo, source, tmp_path)
        helpers.wait_converged(address, relative_path)
        stub = commit_pb2_grpc.CommitServiceStub(channel)
        request = commit_pb2.FindCommitRequest(repository=repo, revision=b"main")

        before = _per_node(healthy)
        for _ in range(60):
            assert (await stub.FindCommit(request)).commit.id == head
        spread = _delta(before, _per_node(healthy))
        assert sum(spread.values()) == 60
        assert sum(1 for count in spread.values() if count > 0) >= 2, spread

        primary = helpers.metadata(address, relative_path).primary
        before = _per_node(healthy)
        for _ in range(30):
            found = await stub.FindCommit(request, metadata=PRIMARY_ONLY)
            assert found.commit.id == head
        pinned = _delta(before, _per_node(healthy))
    assert pinned == {n.name: (30.0 if n.name == primary else 0.0) for n in healthy.nodes}
