"""SIGTERM on a proxy: stop accepting, finish what is in flight, hand over, exit.

With a real cluster of three nodes and two proxies (A and B):

* a push already in flight on A when A gets SIGTERM completes (its votes still
  reach A's transaction service during the drain), while new calls to A are
  refused with UNAVAILABLE and A's health says NOT_SERVING; then A exits 0;
* a write loop through A while A drains: every write either succeeds or fails
  cleanly with UNAVAILABLE, and every acknowledged write is on every replica
  after repair (checked through B);
* replication jobs A had claimed when it was told to stop are released (its
  lease is revoked) and re-claimed by B: none stays in progress beyond the
  lease, and every replica converges.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gitquorum.cluster.queue import JobState
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, ssh_pb2
from tests.harness import gitrepo
from tests.harness.cluster import Cluster, ProxyProcess
from tests.harness.node import wait_for
from tests.integration.limits.calls import FLUSH, hold_receive_pack, pkt
from tests.integration.proxy import helpers
from tests.integration.shutdown.conftest import (
    GRACE,
    WriteLoop,
    exit_code,
    jobs,
    sigterm,
    write_ref,
)


def _pack(source: Path, oid: str) -> bytes:
    return subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "-q"],
        cwd=source,
        input=f"{oid}\n".encode(),
        capture_output=True,
        check=True,
    ).stdout


def _refused(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
                repository_pb2.RepositoryExistsRequest(repository=helpers.repository("x.git")),
                timeout=2,
            )
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    return False


def _healthy_on(proxy: ProxyProcess, node: str) -> bool:
    """Whether ``proxy`` routes to ``node`` (its health consensus), from its metrics."""
    text = helpers.scrape(proxy.metrics_port)
    return any(
        dict(labels).get("storage") == node and dict(labels).get("view") == "consensus" and v == 1
        for labels, v in helpers.samples(text, "gitquorum_node_healthy").items()
    )


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=2)
            .status
        )


async def test_an_in_flight_push_completes_during_the_drain(
    cluster: Cluster, source: Path, tmp_path: Path
) -> None:
    a, b = cluster.proxies
    relative = f"drain/push-{tmp_path.name}.git"
    helpers.create(a.address, relative)
    head = gitrepo.git("rev-parse", "main", cwd=source).strip()
    async with grpc.aio.insecure_channel(a.address) as channel:
        push = await hold_receive_pack(channel, helpers.repository(relative))
        sent = sigterm(a)
        # New calls are refused at once; the health check tells balancers.
        wait_for(lambda: _refused(a.address), 5, 0.05, "proxy A to refuse new calls")
        assert _health(a.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        # The push that was already in flight goes on: commands, pack, EOF.
        command = f"{'0' * 40} {head} refs/heads/main\0report-status\n".encode()
        data = pkt(command) + FLUSH + _pack(source, head)
        for offset in range(0, len(data), 64 * 1024):
            await push.call.write(
                ssh_pb2.SSHReceivePackRequest(stdin=data[offset : offset + 65536])
            )
        await push.call.done_writing()
        report = b""
        while (response := await push.call.read()) is not grpc.aio.EOF:
            report += response.stdout
        assert await push.call.code() == grpc.StatusCode.OK, await push.call.details()
        assert b"unpack ok" in report and b"ok refs/heads/main" in report, report
    assert await asyncio.to_thread(exit_code, a, GRACE + 15) == 0
    assert time.monotonic() - sent < GRACE + 15
    # Acknowledged, so on every replica (B answers for the cluster now).
    helpers.wait_converged(b.address, relative)
    for node, refs in helpers.replica_refs(cluster, b.address, relative).items():
        assert refs.get("refs/heads/main") == head, node


def _refused_cleanly(exc: grpc.RpcError) -> bool:
    code = exc.code()  # type: ignore[attr-defined]
    # Refused by the drain (or the listener is gone): UNAVAILABLE. A call that
    # reaches gRPC at the very instant the server stops is cancelled by gRPC
    # itself before any handler ran: CANCELLED.
    return bool(
        code == grpc.StatusCode.UNAVAILABLE
        or (code == grpc.StatusCode.CANCELLED and exc.details() == "CANCELLED")  # type: ignore[attr-defined]
    )


def test_writes_through_a_draining_proxy_fail_cleanly_and_none_is_lost(
    cluster: Cluster, source: Path, tmp_path: Path
) -> None:
    a, b = cluster.proxies
    relative = f"drain/loop-{tmp_path.name}.git"
    from tests.integration.shutdown.conftest import seed

    seed(a.address, relative, source, tmp_path)
    oid = gitrepo.git("rev-parse", "main", cwd=source).strip()
    loop = WriteLoop(relative, oid, "w", _refused_cleanly)
    acknowledged = loop.acknowledged
    with loop.running([(0, a.address), (1, a.address), (2, a.address), (9, b.address)]):
        wait_for(lambda: len(acknowledged) >= 10, 30, 0.05, "writes to be acknowledged")
        before = len(acknowledged)
        sigterm(a)
        assert exit_code(a, GRACE + 15) == 0
        wait_for(lambda: len(acknowledged) >= before + 5, 30, 0.05, "writes through B")
    refused, unexpected = loop.refused, loop.unexpected
    assert not unexpected, unexpected
    assert refused, "the loop should have hit the drained proxy"
    helpers.wait_converged(b.address, relative, timeout=60)
    for node, refs in helpers.replica_refs(cluster, b.address, relative).items():
        missing = [ref for ref in acknowledged if refs.get(ref) != oid]
        assert not missing, f"{node} lost acknowledged writes: {missing}"


def test_jobs_of_a_draining_proxy_are_reclaimed(
    cluster: Cluster, source: Path, tmp_path: Path
) -> None:
    a, b = cluster.proxies
    target = cluster.nodes[2]
    repos = [f"drain/jobs-{tmp_path.name}-{i}.git" for i in range(8)]
    from tests.integration.shutdown.conftest import seed

    for relative in repos:
        seed(b.address, relative, source, tmp_path)
    oid = gitrepo.git("rev-parse", "main", cwd=source).strip()
    # The target misses one write per repository: one replication job each.
    target.terminate()
    helpers.wait_unhealthy(cluster, target.name)
    for relative in repos:
        write_ref(b.address, relative, "refs/heads/missed", oid)
    target.start()

    def claimed_by(proxy: ProxyProcess) -> list[str]:
        return [
            j.job_id
            for j in jobs(cluster)
            if j.state is JobState.IN_PROGRESS and j.worker.startswith(f"{proxy.name}/")
        ]

    # Freeze the target as soon as a proxy works on one of its jobs: that job
    # hangs on that proxy (the holder) until it is told to stop. (Should the
    # job finish just before the freeze, thaw and wait for the next one.)
    # Either proxy may be the first: the one that sees the target back first
    # can do every job before the other looks (its copies no longer fail on a
    # channel still backing off from the outage).
    held: list[str] = []
    holder = a
    for _ in range(5):
        wait_for(lambda: claimed_by(a) or claimed_by(b), 30, 0.02, "a proxy to claim a job")
        target.pause()
        for proxy in (a, b):
            held, holder = claimed_by(proxy), proxy
            if held:
                break
        if held:
            break
        target.resume()
    assert held, "no proxy held a job while the target was frozen"
    survivor = b if holder is a else a

    def released() -> bool:
        by_id = {j.job_id: j for j in jobs(cluster)}
        return all(
            job_id not in by_id
            or (by_id[job_id].state is JobState.READY and "lease" in by_id[job_id].last_error)
            for job_id in held
        )

    try:
        sigterm(holder)
        # The holder waits out its grace period for the hung job, cancels it
        # and revokes its lease on the way out; it still exits cleanly.
        assert exit_code(holder, GRACE + 20) == 0
        # Nothing stays claimed by the holder: released with its lease and
        # re-readied by the leader (the survivor now) while the target is frozen.
        wait_for(released, 15, 0.1, "the holder's claims to be released and re-readied")
    finally:
        target.resume()
    wait_for(lambda: _healthy_on(survivor, target.name), 30, 0.1, "the survivor to see it healthy")
    wait_for(
        lambda: not [j for j in jobs(cluster) if j.state is not JobState.DEAD],
        90,
        0.2,
        "every replication job to be done (the survivor re-claims the holder's)",
    )
    assert not [j for j in jobs(cluster) if j.job_id in held], "the holder's job was dropped"
    for relative in repos:
        helpers.wait_converged(survivor.address, relative, timeout=60)
        refs = helpers.replica_refs(cluster, survivor.address, relative)
        assert refs[target.name].get("refs/heads/missed") == oid
