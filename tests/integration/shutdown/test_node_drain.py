"""SIGTERM on a storage node: stop accepting, finish what is in flight, exit.

* A clone session in flight on the node when it gets SIGTERM is finished by
  the client, while new calls to the node are refused; the node exits 0
  within its grace period.
* A write loop through both proxies while a node drains and comes back: every
  write succeeds or fails with a retryable status, and every acknowledged
  write is on every replica once the node is repaired.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.limits.calls import hold_upload_pack
from tests.integration.proxy import helpers
from tests.integration.shutdown.conftest import WriteLoop, exit_code, seed, sigterm

NODE_GRACE = 10.0  # a node's default graceful_timeout
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _refused(address: str, storage: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
                repository_pb2.RepositoryExistsRequest(
                    repository=shared_pb2.Repository(storage_name=storage, relative_path="x.git")
                ),
                timeout=1,
            )
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    return False


async def test_an_in_flight_clone_session_completes_during_the_drain(
    cluster: Cluster, source: Path, tmp_path: Path
) -> None:
    a = cluster.proxies[0]
    relative = f"drain/node-{tmp_path.name}.git"
    await asyncio.to_thread(seed, a.address, relative, source, tmp_path)
    meta = helpers.metadata(a.address, relative)
    node = cluster.node(meta.replicas[0].storage)
    replica = shared_pb2.Repository(storage_name=node.name, relative_path=meta.replica_path)
    async with grpc.aio.insecure_channel(node.address) as channel:
        session = await hold_upload_pack(channel, replica)
        assert b"refs/heads/main" in session.advertisement
        sent = sigterm(node)
        await asyncio.to_thread(
            wait_for,
            lambda: _refused(node.address, node.name),
            5,
            0.05,
            "the node to refuse new calls",
        )
        await session.finish()  # asserts the session ended OK
    assert await asyncio.to_thread(exit_code, node, NODE_GRACE + 10) == 0
    assert time.monotonic() - sent < NODE_GRACE + 10


def test_writes_while_a_node_drains_and_returns_lose_nothing(
    cluster: Cluster, source: Path, tmp_path: Path
) -> None:
    a, b = cluster.proxies
    relative = f"drain/node-loop-{tmp_path.name}.git"
    seed(a.address, relative, source, tmp_path)
    oid = gitrepo.git("rev-parse", "main", cwd=source).strip()
    # Drain the primary: the hardest case (writes must move to a new primary).
    node = cluster.node(helpers.metadata(a.address, relative).primary)
    loop = WriteLoop(relative, oid, "n", lambda exc: exc.code() in RETRYABLE)  # type: ignore[attr-defined]
    acknowledged = loop.acknowledged
    with loop.running([(i, p.address) for i, p in enumerate([a, b, a])]):
        wait_for(lambda: len(acknowledged) >= 10, 30, 0.05, "writes to be acknowledged")
        sigterm(node)
        assert exit_code(node, NODE_GRACE + 10) == 0
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 5, 30, 0.05, "writes without the node")
        node.start()
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 5, 30, 0.05, "writes after its return")
    unexpected = loop.unexpected
    assert not unexpected, unexpected
    helpers.wait_converged(a.address, relative, timeout=60)
    for name, refs in helpers.replica_refs(cluster, a.address, relative).items():
        missing = [ref for ref in acknowledged if refs.get(ref) != oid]
        assert not missing, f"{name} lost acknowledged writes: {missing}"
