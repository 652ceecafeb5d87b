"""One proxy's wall clock ten minutes off, on a real cluster (libfaketime).

The skewed proxy still serves: its clock is what the test sees through its
metrics listener, its writes (a push, with the nodes' vote dial-back) go
through. And a repair queued on one clock runs on the other within seconds:
the proxy that queued it dies, the other one is left to run it. Before the
queue counted a job's delay on the claimer's own clock, the job waited for
the skew (``not_before`` ten minutes in the future on the other clock, or the
slow clock never reaching the others' ``not_before``).

And the nemesis's heal undoes it: the proxy comes back on the real clock,
healthy, and a write through it goes through.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.chaos.workload import History
from tests.faults.clock import ClockSkew, clock_offset, faketime_library
from tests.faults.cluster import FAULT_PROXY_SETTINGS, FaultCluster
from tests.faults.context import RunContext
from tests.harness import gitrepo
from tests.harness.cluster import ProxyProcess
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


def pushed_through(
    proxy: ProxyProcess, other: ProxyProcess, source: Path, prefix: str
) -> tuple[str, str]:
    """A new repository created and pushed through ``proxy``, converged as
    ``other`` sees it: its relative path and the pushed head."""
    relative_path = f"{prefix}/{uuid.uuid4().hex}.git"
    helpers.create(proxy.address, relative_path)
    helpers.push(proxy.address, relative_path, source, "main")
    helpers.wait_converged(other.address, relative_path, timeout=30)
    return relative_path, gitrepo.refs(source)["refs/heads/main"]


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
        relative_path, oid = pushed_through(skewed, other, source, "skew")

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


def serving(address: str) -> str:
    """One ``grpc.health.v1`` Check of a proxy: SERVING, NOT_SERVING, or the code."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.mark.parametrize("skew", [600, -600], ids=["ahead", "behind"])
async def test_heal_puts_the_proxy_back_on_the_real_clock_and_serving(
    healthy: FaultCluster, source: Path, skew: int
) -> None:
    cluster = healthy
    run = RunContext(cluster, random.Random(skew), [], History())  # type: ignore[arg-type]
    # The nemesis picks the proxy itself (run.rng), as in a fault run.
    nemesis = ClockSkew(skew)
    fault = await nemesis.inject(run)
    try:
        name = fault.target
        proxy = cluster.proxy(name)
        other = next(p for p in cluster.proxies if p.name != name)
        assert fault.kind == "clock" and fault.proxies_down == (name,), fault
        # Injected: that proxy's wall clock is off by the skew, the other's is not
        # (so the difference is the proxy's, not the test's own clock).
        assert abs(clock_offset(proxy) - skew) < 3, clock_offset(proxy)
        assert abs(clock_offset(other)) < 3, clock_offset(other)
        skewed_pid = proxy.pid
    finally:
        await nemesis.heal(run)

    # Healed: a new process (the skewed one is gone), on the real clock.
    assert proxy.alive() and proxy.pid != skewed_pid, (proxy.pid, skewed_pid)
    assert abs(clock_offset(proxy)) < 3, clock_offset(proxy)
    # Down only while each restart ran: one window for the inject, one for the heal.
    assert len(fault.proxies_down_during) == 2, fault.proxies_down_during
    # Serving: its own health check, and its view of the nodes back in the
    # consensus every proxy routes by.
    assert serving(proxy.address) == "SERVING"
    helpers.wait_all_healthy(cluster, timeout=60)

    # A write through the healed proxy goes through (gRPC, etcd, the vote
    # dial-back) and lands on every replica.
    relative_path, oid = pushed_through(proxy, other, source, "skew-healed")
    refs = helpers.replica_refs(cluster, other.address, relative_path)
    assert len(refs) == len(cluster.nodes), refs
    assert {node: r.get("refs/heads/main") for node, r in refs.items()} == dict.fromkeys(
        refs, oid
    ), refs
