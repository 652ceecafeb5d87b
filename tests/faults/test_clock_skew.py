"""One proxy's wall clock ten minutes off, on a real cluster (libfaketime).

The skewed proxy still serves: its clock is what the test sees through its
metrics listener, its writes (a push, with the nodes' vote dial-back) go
through. And a repair queued on one clock runs on the other within seconds:
the proxy that queued it dies, the other one is left to run it. Before the
queue counted a job's delay on the claimer's own clock, the job waited for
the skew (``not_before`` ten minutes in the future on the other clock, or the
slow clock never reaching the others' ``not_before``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.chaos.workload import History
from tests.faults.clock import ClockSkew, clock_offset, faketime_library
from tests.faults.cluster import FAULT_PROXY_SETTINGS, FaultCluster
from tests.faults.context import RunContext
from tests.harness import gitrepo
from tests.harness.node import wait_for
from tests.integration.proxy import helpers

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(faketime_library() is None, reason="libfaketime is not installed"),
]

# A repair must run well within this; the skew is 600 s.
REPAIR_DEADLINE = 25.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    started = FaultCluster(
        tmp_path_factory.mktemp("clock-skew"),
        etcd_size=1,
        proxies_count=2,
        proxy_settings=FAULT_PROXY_SETTINGS,
    ).start()
    yield started
    started.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(tmp_path_factory.mktemp("clock-source") / "source", commits=3)


@pytest.fixture
def healthy(cluster: FaultCluster, request: pytest.FixtureRequest) -> Iterator[FaultCluster]:
    """Every proxy and node up, on the real clock, every node healthy."""
    for proxy in cluster.proxies:
        if not proxy.alive():
            proxy.env = None
            proxy.start()
    for node in cluster.nodes:
        if not node.alive():
            node.start()
    helpers.wait_all_healthy(cluster, timeout=60)
    yield cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.log_tail())


def branch(address: str, relative_path: str, name: str, oid: str) -> None:
    """One UpdateReferences through ``address``: a new branch at ``oid``."""
    with grpc.insecure_channel(address) as channel:
        ref_pb2_grpc.RefServiceStub(channel).UpdateReferences(
            iter(
                [
                    ref_pb2.UpdateReferencesRequest(
                        repository=helpers.repository(relative_path),
                        updates=[
                            ref_pb2.UpdateReferencesRequest.Update(
                                reference=f"refs/heads/{name}".encode(),
                                new_object_id=oid.encode(),
                            )
                        ],
                    )
                ]
            ),
            timeout=30,
        )


@pytest.mark.parametrize("skew", [600, -600], ids=["ahead", "behind"])
async def test_a_repair_queued_on_one_clock_runs_on_the_other(
    healthy: FaultCluster, source: Path, skew: int
) -> None:
    cluster = healthy
    run = RunContext(cluster, random.Random(skew), [], History())  # type: ignore[arg-type]
    nemesis = ClockSkew(skew, "proxy1")
    await nemesis.inject(run)
    try:
        skewed, other = cluster.proxy("proxy1"), cluster.proxy("proxy2")
        # The skewed proxy's wall clock is off; the test's and the other's are not.
        assert abs(clock_offset(skewed) - skew) < 3, clock_offset(skewed)
        assert abs(clock_offset(other)) < 3, clock_offset(other)
        helpers.wait_all_healthy(cluster, timeout=60)

        # Writes through the skewed proxy go through (gRPC, etcd, the vote dial-back).
        relative_path = f"skew/{uuid.uuid4().hex}.git"
        helpers.create(skewed.address, relative_path)
        helpers.push(skewed.address, relative_path, source, "main")
        oid = gitrepo.refs(source)["refs/heads/main"]
        helpers.wait_converged(other.address, relative_path, timeout=30)

        # The ahead proxy queues the repair and dies; the behind one is left
        # to run the other's repair.
        queuer, runner = (skewed, other) if skew > 0 else (other, skewed)
        meta = helpers.metadata(queuer.address, relative_path)
        victim = next(cluster.node(r.storage) for r in meta.replicas if r.storage != meta.primary)
        victim.kill()
        helpers.wait_unhealthy(cluster, victim.name, timeout=30)
        branch(queuer.address, relative_path, "while-down", oid)
        behind = helpers.metadata(queuer.address, relative_path)
        assert helpers.generations(behind)[victim.name] < behind.generation
        queuer.kill()
        victim.start()
        wait_for(
            lambda: helpers.converged(runner.address, relative_path),
            REPAIR_DEADLINE,
            interval=0.2,
            what=f"{victim.name}'s repair (queued by {queuer.name}) run by {runner.name}",
        )
        refs = helpers.replica_refs(cluster, runner.address, relative_path)
        assert refs[victim.name].get("refs/heads/while-down") == oid
    finally:
        await nemesis.heal(run)
