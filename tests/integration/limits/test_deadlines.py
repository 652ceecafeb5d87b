"""Deadlines reach the nodes, and a call's git process dies with the call.

* A client deadline of 1 s on a call that would wait forever (an upload-pack
  session waiting for its wants) ends in DEADLINE_EXCEEDED, and the node's
  git process is gone shortly after.
* The deadline itself travels to the node: with the proxy frozen (SIGSTOP),
  so that it cannot cancel anything, the node still ends the call and kills
  git when the deadline passes.
* A clone cancelled mid-stream leaves no upload-pack or pack-objects behind
  on any node (children of the node processes, read from /proc), and gives
  its repository's concurrency slot back at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import ssh_pb2
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import NodeProcess
from tests.integration.limits import procs
from tests.integration.limits.calls import FLUSH, first_oid, hold_upload_pack, pkt, wait_until
from tests.integration.limits.conftest import new_repository, repository


def _node_pid(node: NodeProcess) -> int:
    assert node.proc is not None
    return node.proc.pid


def _serving(cluster: Cluster) -> list[NodeProcess]:
    """Nodes running a per-call git process right now."""
    return [n for n in cluster.nodes if procs.git_processes(_node_pid(n))]


async def test_client_deadline_ends_the_call_and_its_git_process(cluster: Cluster) -> None:
    address = cluster.proxies[0].address
    repo = new_repository(address)
    async with grpc.aio.insecure_channel(address) as channel:
        started = time.monotonic()
        held = await hold_upload_pack(channel, repo, deadline=1.0)
        await wait_until(lambda: _serving(cluster), 5, "upload-pack to run on a node")
        [node] = _serving(cluster)
        code = await held.call.code()
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, code
        assert time.monotonic() - started < 5
    await wait_until(
        lambda: not procs.git_processes(_node_pid(node)), 5, "the node's upload-pack to exit"
    )


async def test_the_deadline_travels_to_the_node(cluster: Cluster) -> None:
    address = cluster.proxies[0].address
    proxy = cluster.proxies[0]
    repo = new_repository(address)
    async with grpc.aio.insecure_channel(address) as channel:
        started = time.monotonic()
        held = await hold_upload_pack(channel, repo, deadline=3.0)
        await wait_until(lambda: _serving(cluster), 5, "upload-pack to run on a node")
        [node] = _serving(cluster)
        proxy.pause()  # from now on only the node can end the call
        try:
            await wait_until(
                lambda: not procs.git_processes(_node_pid(node)),
                15,
                "the node to end the call at its deadline, on its own",
            )
            ended = time.monotonic() - started
        finally:
            proxy.resume()
        # Not before the deadline (nothing else ends it), and not long after.
        assert 2.5 < ended < 10, ended
        assert await held.call.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Incompressible, so the pack takes many messages to stream, and far more
    # than every buffer on the way holds (the node's queue of 16 messages of
    # up to 256 KiB, two HTTP/2 windows that grow to several MiB, the proxy's
    # relay): with 12 MiB git sometimes finished before the test looked.
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("big") / "source", commits=1, binary_size=64 * 1024 * 1024
    )


async def test_a_cancelled_clone_leaves_no_git_process(
    cluster: Cluster, big_source: Path, tmp_path: Path
) -> None:
    address = cluster.proxies[0].address
    repo = repository(f"limits/big-{tmp_path.name}.git")
    async with grpc.aio.insecure_channel(address) as channel:
        await gitrepo.seed(channel, repo, big_source, tmp_path)
        held = await hold_upload_pack(channel, repo)
        oid = first_oid(held.advertisement)
        await held.call.write(
            ssh_pb2.SSHUploadPackRequest(stdin=pkt(f"want {oid}\n".encode()) + FLUSH)
        )
        await held.call.write(ssh_pb2.SSHUploadPackRequest(stdin=pkt(b"done\n")))
        received = 0
        while received < 256 * 1024:  # a little of the pack: well before its end
            response = await held.call.read()
            assert response is not grpc.aio.EOF
            received += len(response.stdout)
        serving = _serving(cluster)
        assert serving, "the clone should still be streaming"
        held.call.cancel()
        # The cancelled clone gave its repository slot back at once (one
        # expensive read per repository here): the next clone is admitted
        # within the 1 s queue timeout instead of RESOURCE_EXHAUSTED.
        after = await hold_upload_pack(channel, repo)
        assert after.waited < 1.0, after.waited
        after.call.cancel()
    for node in serving:
        await wait_until(
            lambda node=node: not procs.git_processes(_node_pid(node)),  # type: ignore[misc]
            10,
            f"{node.name}'s upload-pack and pack-objects to exit",
        )
    assert all(node.alive() for node in cluster.nodes)
