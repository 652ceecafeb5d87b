"""What a client sees when a node dies: passive health, the retried write, the message.

Real etcd, three nodes and two proxies with a *long* health interval (5 s), so
that anything seen well before two intervals was seen by passive health (a
check made at once because a connection failed), not by the periodic checks.
Outcomes are asserted, with deadlines shorter than one interval, never timings.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

pytestmark = pytest.mark.timeout(180)

INTERVAL = 5.0
# Well under one interval: the periodic checks need two (10 s) to see a death.
PASSIVE_DEADLINE = 2.5
SETTINGS: dict[str, object] = {
    "health": {"interval": f"{INTERVAL:g}s", "timeout": "1s"},
    "replication": {"reconcile_interval": "1s"},
}
CORRELATION = "x-gitquorum-correlation-id"


@pytest.fixture(scope="module")
def slow_checks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("node-death")
    started = Cluster(base, nodes_count=3, proxies_count=2, proxy_settings=SETTINGS).start()
    yield started
    started.close()


@pytest.fixture
def cluster(slow_checks: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Every node up and healthy by consensus before each test."""
    for node in slow_checks.nodes:
        if not node.alive():
            node.start()
    helpers.wait_all_healthy(slow_checks, timeout=60)
    yield slow_checks
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(slow_checks.log_tail())


def _repository(cluster: Cluster, source: Path) -> tuple[str, str]:
    """A repository on every node, and the commit its main branch points at."""
    relative_path = f"death/{uuid.uuid4().hex}.git"
    address = cluster.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main")
    helpers.wait_converged(address, relative_path)
    return relative_path, gitrepo.refs(source)["refs/heads/main"]


def _write(address: str, relative_path: str, name: str, oid: str, timeout: float) -> None:
    """One UpdateReferences: a new branch at ``oid``."""
    with grpc.insecure_channel(address) as channel:
        stub = ref_pb2_grpc.RefServiceStub(channel)
        request = ref_pb2.UpdateReferencesRequest(
            repository=repository(relative_path),
            updates=[
                ref_pb2.UpdateReferencesRequest.Update(
                    reference=f"refs/heads/{name}".encode(),
                    new_object_id=oid.encode(),
                )
            ],
        )
        stub.UpdateReferences(iter([request]), timeout=timeout)


def _unhealthy_everywhere(cluster: Cluster, node: str) -> bool:
    """Whether every proxy sees ``node`` unhealthy, in its own view and by consensus."""
    for proxy in cluster.proxies:
        text = helpers.scrape(proxy.metrics_port)
        for view in ("local", "consensus"):
            if helpers.sample(text, "gitquorum_node_healthy", storage=node, view=view) != 0.0:
                return False
    return True


def _immediate_probes(cluster: Cluster, node: str, result: str) -> float:
    return sum(
        helpers.sample(
            helpers.scrape(p.metrics_port),
            "gitquorum_health_immediate_probes_total",
            node=node,
            result=result,
        )
        for p in cluster.proxies
    )


def test_a_killed_node_is_seen_unhealthy_well_before_two_intervals(cluster: Cluster) -> None:
    victim = cluster.nodes[2]
    victim.kill()
    started = time.monotonic()
    # Both proxies must see it: the consensus of two proxies needs both votes.
    wait_for(
        lambda: _unhealthy_everywhere(cluster, victim.name),
        PASSIVE_DEADLINE,
        0.05,
        f"{victim.name} unhealthy on every proxy, locally and by consensus",
    )
    seen_after = time.monotonic() - started
    # Seen by checks made out of turn, on each proxy.
    for proxy in cluster.proxies:
        text = helpers.scrape(proxy.metrics_port)
        assert (
            helpers.sample(
                text,
                "gitquorum_health_immediate_probes_total",
                node=victim.name,
                result="unhealthy",
            )
            >= 1
        ), proxy.name
    print(f"{victim.name} unhealthy everywhere {seen_after:.3f}s after the kill")


def test_a_write_right_after_the_primary_died_goes_to_the_new_primary(
    cluster: Cluster, source: Path
) -> None:
    relative_path, oid = _repository(cluster, source)
    address = cluster.proxies[0].address
    primary = helpers.metadata(address, relative_path).primary
    retried_before = helpers.sample(
        helpers.scrape(cluster.proxies[0].metrics_port),
        "gitquorum_write_retries_total",
        result="retried",
    )
    cluster.node(primary).kill()
    # At once: the proxies still count the dead node as the primary.
    _write(address, relative_path, "right-after-the-kill", oid, timeout=20)
    meta = helpers.metadata(address, relative_path)
    assert meta.primary != primary
    branches = helpers.replica_refs(cluster, address, relative_path)
    assert "refs/heads/right-after-the-kill" in branches[meta.primary]
    retried = helpers.sample(
        helpers.scrape(cluster.proxies[0].metrics_port),
        "gitquorum_write_retries_total",
        result="retried",
    )
    # Sent before any node received it, held until the failover, sent once more
    # (the write reaches the proxy well within the 100 ms between its checks).
    assert retried - retried_before == 1


def test_a_clients_error_has_the_correlation_id_and_no_address(
    cluster: Cluster, source: Path
) -> None:
    relative_path, _ = _repository(cluster, source)
    address = cluster.proxies[0].address
    primary = helpers.metadata(address, relative_path).primary
    cluster.node(primary).kill()
    correlation = f"test-{uuid.uuid4().hex}"
    # A read that must go to the primary, right after it died.
    with grpc.insecure_channel(address) as channel:
        stub = ref_pb2_grpc.RefServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.FindDefaultBranchName(
                ref_pb2.FindDefaultBranchNameRequest(repository=repository(relative_path)),
                timeout=10,
                metadata=(
                    (CORRELATION, correlation),
                    ("gitaly-route-repository-accessor-policy", "primary-only"),
                ),
            )
    error = caught.value
    details = error.details()  # type: ignore[attr-defined]
    assert error.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert f"correlation id {correlation}" in details, details
    for internal in ("127.0.0.1", "ipv4", "failed to connect", "Connection refused", "Socket"):
        assert internal not in details, details
    # The details are on the proxy's log line of the call, under the same id.
    wait_for(
        lambda: any(
            correlation in line and "rpc failed" in line
            for line in cluster.proxies[0].log_tail(400).splitlines()
        ),
        10,
        0.1,
        "the call's log line",
    )
