"""Per-repository concurrency limits, through a real proxy and on a real node.

With one slot per repository and kind, a second pack stream (or mutator) on
the same repository waits in the queue for ``queue_timeout`` (1 s here) and
then fails with RESOURCE_EXHAUSTED, while other repositories are served at
once; a queued call is admitted as soon as the slot frees; a full queue is
refused at once. The held calls are real SSH sessions whose git process waits
for the client.
"""

from __future__ import annotations

import asyncio

import grpc

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from tests.harness.cluster import Cluster
from tests.harness.node import NodeProcess
from tests.integration.limits.calls import (
    hold_receive_pack,
    hold_upload_pack,
    status_of,
)
from tests.integration.limits.conftest import new_repository

QUEUE_TIMEOUT = 1.0


async def _exhausted_after_queueing(channel: grpc.aio.Channel, repo: object) -> None:
    code, details, took = await status_of(hold_upload_pack(channel, repo))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "concurrency queue" in details and "retry later" in details, details
    # It waited its turn for queue_timeout before giving up, not more.
    assert QUEUE_TIMEOUT * 0.9 <= took < QUEUE_TIMEOUT + 4, took


async def _expensive_reads_are_limited(address: str) -> None:
    repo, other = new_repository(address), new_repository(address)
    async with grpc.aio.insecure_channel(address) as channel:
        held = await hold_upload_pack(channel, repo)
        await _exhausted_after_queueing(channel, repo)
        # Another repository has its own slots: served at once.
        elsewhere = await hold_upload_pack(channel, other)
        assert elsewhere.waited < QUEUE_TIMEOUT
        await elsewhere.finish()
        # A queued call is admitted as soon as the running one ends.
        queued = asyncio.ensure_future(hold_upload_pack(channel, repo))
        await asyncio.sleep(0.3)
        assert not queued.done()
        await held.finish()
        admitted = await asyncio.wait_for(queued, 5)
        assert 0.2 < admitted.waited < QUEUE_TIMEOUT
        await admitted.finish()
        # Free again: no slot leaked by the calls above.
        again = await hold_upload_pack(channel, repo)
        assert again.waited < QUEUE_TIMEOUT
        await again.finish()


async def test_expensive_reads_through_the_proxy(cluster: Cluster) -> None:
    await _expensive_reads_are_limited(cluster.proxies[0].address)


async def test_expensive_reads_on_a_node(limited_node: NodeProcess) -> None:
    await _expensive_reads_are_limited(limited_node.address)


async def test_a_full_queue_is_refused_at_once(cluster: Cluster) -> None:
    address = cluster.proxies[0].address
    repo = new_repository(address)
    async with grpc.aio.insecure_channel(address) as channel:
        held = await hold_upload_pack(channel, repo)
        # max_queued is 2: two wait, the third is refused without waiting.
        waiting = [asyncio.ensure_future(hold_upload_pack(channel, repo)) for _ in range(2)]
        await asyncio.sleep(0.3)
        code, details, took = await status_of(hold_upload_pack(channel, repo))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "maximum queue size" in details and took < QUEUE_TIMEOUT * 0.9, (details, took)
        await held.finish()
        for task in waiting:
            try:
                (await task).call.cancel()
            except grpc.aio.AioRpcError as exc:
                # The second in line may time out while the first holds the slot.
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _mutators_are_limited(address: str) -> None:
    repo, other = new_repository(address), new_repository(address)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)

        def write_ref(target: object) -> object:
            return stub.WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=target,  # type: ignore[arg-type]
                    ref=b"HEAD",
                    revision=b"refs/heads/main",
                ),
                timeout=30,
            )

        # A push session waiting for its commands holds the repository's only slot.
        push = await hold_receive_pack(channel, repo)
        code, details, took = await status_of(write_ref(repo))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "mutator" in details and QUEUE_TIMEOUT * 0.9 <= took < QUEUE_TIMEOUT + 4
        code, details, _ = await status_of(write_ref(other))
        assert code == grpc.StatusCode.OK, details
        # Reads are not mutators: a clone of the same repository goes ahead.
        clone = await hold_upload_pack(channel, repo)
        assert clone.waited < QUEUE_TIMEOUT
        await clone.finish()
        await push.finish()
        code, details, _ = await status_of(write_ref(repo))
        assert code == grpc.StatusCode.OK, details


async def test_mutators_through_the_proxy(cluster: Cluster) -> None:
    await _mutators_are_limited(cluster.proxies[0].address)


async def test_mutators_on_a_node(limited_node: NodeProcess) -> None:
    await _mutators_are_limited(limited_node.address)
