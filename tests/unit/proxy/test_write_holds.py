"""Catch-up write holds: not bound to the claim that set them, and judged by
each proxy's wall clock.

* A worker whose lease was lost is cancelled mid held copy; its ``finally``
  releases "the hold of replica n3" without any claim guard. The job's new
  holder has meanwhile set its own hold for n3 (holds name the replica only),
  so the orphaned worker ends the new holder's hold: writes resume in the
  middle of the new holder's last copy, and the orphan changed the record
  although failover.md says a worker that lost its claim records nothing.
* A proxy whose wall clock runs ahead of the worker's by more than the hold
  (2 s), or by minutes (the deadline looks long past), does not wait at all:
  failover.md says every proxy that sees a hold waits, for at most
  ``HOLD_CAP`` "whatever the deadline says".
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from prometheus_client import CollectorRegistry

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.queue import JobType, ReplicationQueue
from gitquorum.cluster.repositories import HOLD_CAP, RepositoryCache, RepositoryStore
from gitquorum.gitaly import repository_pb2_grpc
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.etcd_cluster_port import EtcdClusterPort
from gitquorum.proxy.metrics import ProxyMetrics
from gitquorum.proxy.replication import CatchUp, Replicator
from tests.unit.proxy.finalizer_parts import KEYS, NODES, AllHealthy
from tests.unit.proxy.test_replication_claims import FakeChannels, FakeNode, HookStore

VS = "vs"


async def _outdated_n3() -> tuple[HookStore, ManualClock, RepositoryStore, RepositoryCache, int]:
    clock = ManualClock()
    store = HookStore(clock)
    repos = RepositoryStore(store, KEYS)
    record = await repos.create(VS, "r.git", nodes=NODES, healthy=set(NODES))
    rid = record.repository_id
    record = await repos.increment_generation(VS, rid, ["n1", "n2"])
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    await asyncio.wait_for(cache.wait_for_revision(record.revision), 5)
    return store, clock, repos, cache, rid


async def test_an_orphaned_catch_up_does_not_release_the_new_holders_hold() -> None:
    store, clock, repos, cache, rid = await _outdated_n3()
    try:
        queue = ReplicationQueue(store, KEYS, clock=clock)
        await queue.enqueue(JobType.UPDATE, VS, rid, "r.git", "n3", source_node="n1")

        class W:
            def __init__(self, name: str, lease_id: int) -> None:
                self.name, self.lease_id = name, lease_id

        lease = await store.grant(5)
        first = await queue.claim_next(W("p1/0", lease.id))
        assert first is not None
        node = FakeNode()  # its copy runs until released: never, here
        replicator = Replicator(
            repos, cache, cast(NodeChannels, FakeChannels(node)), lambda _vs: frozenset(NODES)
        )
        stub = repository_pb2_grpc.RepositoryServiceStub(
            cast(NodeChannels, FakeChannels(node)).channel("n3")  # type: ignore[arg-type]
        )
        orphan = CatchUp(replicator, VS, rid, "n3", first.guard)
        held = asyncio.ensure_future(orphan._held_copy(stub, [], "n1"))
        async with asyncio.timeout(5):
            await node.started.wait()
        assert (await repos.get(VS, rid)).hold_for == "n3"
        # p1 is paused past its lease; the job is taken over by p2, whose catch-up
        # reaches its own held copy.
        clock.advance(10)
        assert await queue.recover_orphans() == 1
        lease2 = await store.grant(5)
        second = await queue.claim_next(W("p2/0", lease2.id))
        assert second is not None and second.job.job_id == first.job.job_id
        mine = await repos.hold_writes(VS, rid, "n3", time.time(), HOLD_CAP)
        assert mine.hold_for == "n3"
        # p1 resumes: its keeper finds the lease lost and cancels the job.
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        after = await repos.get(VS, rid)
        assert after.revision == mine.revision, (
            "the orphaned worker changed the record after losing its claim "
            f"(hold now {after.hold_for!r}; p2's hold for its last copy is gone)"
        )
    finally:
        await cache.close()


async def test_a_proxy_whose_clock_runs_ahead_still_waits_for_a_hold() -> None:
    store, _clock, repos, cache, rid = await _outdated_n3()
    try:
        port = EtcdClusterPort(
            {VS: NODES},
            {VS: 3},
            repos,
            cache,
            health=AllHealthy(),  # type: ignore[arg-type]
            local_health=lambda _vs, _node: True,
            queue=ReplicationQueue(store, KEYS),
            metrics=ProxyMetrics(CollectorRegistry()),
        )
        # This proxy's clock is 3 s ahead of the replication worker's.
        held = await repos.hold_writes(VS, rid, "n3", time.time() - 3.0, HOLD_CAP)
        await asyncio.wait_for(cache.wait_for_revision(held.revision), 5)
        started = time.monotonic()
        write = asyncio.ensure_future(port.ensure_writable(held))
        await asyncio.sleep(0.3)
        waited = not write.done()
        await repos.release_writes(VS, rid, "n3")
        async with asyncio.timeout(HOLD_CAP + 1):
            await write
        assert waited, (
            f"the write went on after {time.monotonic() - started:.3f}s while the "
            "repository's writes were held"
        )
    finally:
        await cache.close()


async def test_a_proxy_waits_for_a_hold_set_by_a_worker_whose_clock_runs_behind() -> None:
    store, _clock, repos, cache, rid = await _outdated_n3()
    try:
        port = EtcdClusterPort(
            {VS: NODES},
            {VS: 3},
            repos,
            cache,
            health=AllHealthy(),  # type: ignore[arg-type]
            local_health=lambda _vs, _node: True,
            queue=ReplicationQueue(store, KEYS),
            metrics=ProxyMetrics(CollectorRegistry()),
        )
        # The worker's clock runs ten minutes behind this proxy's: its live
        # hold's deadline looks long past here.
        held = await repos.hold_writes(VS, rid, "n3", time.time() - 600.0, HOLD_CAP)
        await asyncio.wait_for(cache.wait_for_revision(held.revision), 5)
        started = time.monotonic()
        write = asyncio.ensure_future(port.ensure_writable(held))
        await asyncio.sleep(0.3)
        waited = not write.done()
        await repos.release_writes(VS, rid, "n3")
        async with asyncio.timeout(HOLD_CAP + 1):
            await write
        assert waited, (
            f"the write went on after {time.monotonic() - started:.3f}s while the "
            "repository's writes were held"
        )
    finally:
        await cache.close()
