"""One proxy's blind spot: one of two proxies loses its path to one node.

The node is up and the other proxy reaches it, so it must stay healthy by
consensus (seen healthy by at least half of the live proxies: one of two) and
keep its primaries: no failover. The proxy that cannot reach it routes around
it: writes to repositories where it is a secondary go on without it; writes to
repositories whose primary it is fail with UNAVAILABLE through that proxy only
(the primary must take part in every write, and such writes are not forwarded
to the other proxy). Through the other proxy every write succeeds with the node
taking part. Once the path heals, the replicas converge.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from tests.chaos.nemesis import Relay
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers

pytestmark = pytest.mark.timeout(180)

CUT_OFF = "proxy2"
# Several health rounds (250 ms each in the harness) and leader passes after the
# cut proxy has seen the node unhealthy: long enough for a failover to happen if
# the consensus let one through.
OBSERVE = 5.0


@dataclass
class BlindSpotCluster(Cluster):
    """A cluster where one proxy (``CUT_OFF``) reaches every node through a relay
    of its own; the other proxies reach the nodes directly."""

    relays: dict[str, Relay] = field(default_factory=dict)

    def proxy_config(self, name: str, port: int) -> dict[str, object]:
        config = super().proxy_config(name, port)
        if name == CUT_OFF:
            storages: Any = config["virtual_storages"]
            for entry in storages[0]["nodes"]:
                node = entry["storage"]
                self.relays[node] = Relay(self.node(node).address, f"{name}->{node}").start()
                entry["address"] = self.relays[node].address
        return config

    def close(self) -> None:
        super().close()
        for relay in self.relays.values():
            relay.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BlindSpotCluster]:
    started = BlindSpotCluster(
        tmp_path / "cluster",
        nodes_count=3,
        proxies_count=2,
        replication_factor=3,
        proxy_settings={"replication": {"reconcile_interval": "1s"}},
    )
    try:
        started.start()
        helpers.wait_all_healthy(started)
        yield started
    finally:
        started.close()


def node_healthy(cluster: Cluster, proxy: str, node: str, view: str) -> bool:
    """``node`` as ``proxy`` sees it: its own probes (local) or the consensus."""
    process = next(p for p in cluster.proxies if p.name == proxy)
    text = helpers.scrape(process.metrics_port)
    return helpers.sample(text, "gitquorum_node_healthy", storage=node, view=view) == 1.0


def failovers(cluster: Cluster) -> float:
    return sum(
        helpers.sample(helpers.scrape(p.metrics_port), "gitquorum_failovers_total")
        for p in cluster.proxies
    )


def write_ref(address: str, relative_path: str, ref: str, revision: str) -> None:
    with grpc.insecure_channel(address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
            repository_pb2.WriteRefRequest(
                repository=helpers.repository(relative_path),
                ref=ref.encode(),
                revision=revision.encode(),
            ),
            timeout=30,
        )


def test_one_proxy_cut_off_from_one_node_fails_nothing_over(
    cluster: BlindSpotCluster, tmp_path: Path
) -> None:
    direct = next(p for p in cluster.proxies if p.name != CUT_OFF)
    cut_off = next(p for p in cluster.proxies if p.name == CUT_OFF)
    source = gitrepo.make_repo(tmp_path / "source")
    head = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()

    # Repositories until two have different primaries: the node cut off is the
    # primary of one and a secondary of the other (replication factor 3).
    by_primary: dict[str, str] = {}
    for _ in range(6):
        relative_path = f"blind/{uuid.uuid4().hex}.git"
        helpers.create(direct.address, relative_path)
        helpers.push(direct.address, relative_path, source, "main")
        meta = helpers.wait_converged(direct.address, relative_path).meta
        by_primary.setdefault(meta.primary, relative_path)
        if len(by_primary) == 2:
            break
    assert len(by_primary) == 2, by_primary
    cut_node, other = sorted(by_primary)
    led_by_cut = by_primary[cut_node]  # its primary is the node cut off
    led_by_other = by_primary[other]  # the node cut off is a secondary
    assert failovers(cluster) == 0

    cluster.relays[cut_node].cut()
    wait_for(
        lambda: not node_healthy(cluster, CUT_OFF, cut_node, "local"),
        15,
        interval=0.1,
        what=f"{CUT_OFF} to see {cut_node} unhealthy",
    )
    # The consensus keeps the node (seen by one of two proxies) on both proxies,
    # for long enough that a failover would have happened.
    deadline = time.monotonic() + OBSERVE
    while time.monotonic() < deadline:
        for proxy in (direct.name, cut_off.name):
            assert node_healthy(cluster, proxy, cut_node, "consensus"), proxy
        assert node_healthy(cluster, direct.name, cut_node, "local")
        time.sleep(0.25)

    # Through the other proxy: every write succeeds, the node taking part.
    for i, relative_path in enumerate((led_by_cut, led_by_other)):
        write_ref(direct.address, relative_path, f"refs/heads/direct-{i}", head)
        meta = helpers.metadata(direct.address, relative_path)
        assert helpers.generations(meta)[cut_node] == meta.generation, meta

    # Through the cut-off proxy: a repository where the node is a secondary is
    # written without it; one whose primary it is cannot be written there.
    write_ref(cut_off.address, led_by_other, "refs/heads/cut-off", head)
    with pytest.raises(grpc.RpcError) as refused:
        write_ref(cut_off.address, led_by_cut, "refs/heads/cut-off", head)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value

    # No failover: the primaries recorded in etcd (as both proxies see them) stand.
    for proxy in (direct, cut_off):
        assert helpers.metadata(proxy.address, led_by_cut).primary == cut_node
        assert helpers.metadata(proxy.address, led_by_other).primary == other
    assert failovers(cluster) == 0
    assert node_healthy(cluster, direct.name, cut_node, "consensus")

    cluster.relays[cut_node].heal()
    wait_for(
        lambda: node_healthy(cluster, CUT_OFF, cut_node, "local"),
        15,
        interval=0.1,
        what=f"{CUT_OFF} to see {cut_node} again",
    )
    for primary, relative_path in by_primary.items():
        converged = helpers.wait_converged(direct.address, relative_path, timeout=60)
        assert converged.meta.primary == primary
    write_ref(cut_off.address, led_by_cut, "refs/heads/after-heal", head)
    assert failovers(cluster) == 0
