"""Replication workers share one lease, however they race for it."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobState, JobType, ReplicationQueue
from gitquorum.cluster.store import Lease
from gitquorum.proxy.replication import ReplicationMetrics, ReplicationWorkers, Replicator


class _CountingStore(MemoryStore):
    def __init__(self) -> None:
        # Interleaving makes concurrent grants overlap as remote calls do.
        super().__init__(interleave=random.Random(7))
        self.granted: list[int] = []

    async def grant(self, ttl: float) -> Lease:
        lease = await super().grant(ttl)
        self.granted.append(lease.id)
        return lease


async def test_workers_starting_together_take_one_lease_and_release_it() -> None:
    store = _CountingStore()
    asked = 0
    every_worker_asked = asyncio.Event()

    def targets() -> list[tuple[str, str]]:
        # Called by each worker once it holds the lease: nothing to claim.
        nonlocal asked
        asked += 1
        if asked >= 4:
            every_worker_asked.set()
        return []

    workers = ReplicationWorkers(
        "p1",
        ReplicationQueue(store, Keyspace("t")),
        cast(Replicator, cast(Any, None)),  # never called: nothing is claimed
        targets,
        ReplicationMetrics(CollectorRegistry()),
        workers=4,
        lease_ttl=5.0,
    )
    await workers.start()
    try:
        async with asyncio.timeout(5):
            await every_worker_asked.wait()
    finally:
        await workers.close(0)
    assert len(store.granted) == 1, f"{len(store.granted)} leases for one pool of workers"
    assert await store.time_to_live(store.granted[0]) == -1, "close() left the lease alive"


class _Holder:
    def __init__(self, name: str, lease_id: int) -> None:
        self.name = name
        self.lease_id = lease_id


async def test_a_claim_whose_release_etcd_could_not_confirm_is_released_again() -> None:
    # A job's copy failed and its release (fail) timed out, as its ack may
    # have: the lock stayed on the pool's live lease, so neither orphan
    # recovery nor any worker ran that replica's jobs again while the proxy
    # lived (the review of the lost-claim fix). The pool keeps such a claim
    # and releases it again before its next claim (``_settle``).
    store = MemoryStore()
    queue = ReplicationQueue(store, Keyspace("t"), backoff=0.0)
    workers = ReplicationWorkers(
        "p1",
        queue,
        cast(Replicator, cast(Any, None)),
        list,
        ReplicationMetrics(CollectorRegistry()),
    )
    job = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n1", source_node="n2")
    lease = (await store.grant(1000)).id
    claim = await queue.claim_next(_Holder("p1/0", lease))
    assert claim is not None
    store.set_available(False)
    assert await workers._release(claim, "copy failed") is False
    store.set_available(True)
    # Still locked on the live lease: orphan recovery leaves it, nothing runs.
    assert await queue.recover_orphans() == 0
    assert await queue.claim_next(_Holder("p2/0", (await store.grant(1000)).id)) is None
    await workers._settle()
    (after,) = await queue.jobs()
    assert after.job_id == job.job_id and after.state is JobState.FAILED
    assert store.dump(Keyspace("t").locks()) == {}
    again = await queue.claim_next(_Holder("p2/0", (await store.grant(1000)).id))
    assert again is not None and again.job.job_id == job.job_id


class _SlowQueue:
    """``fail`` of claim "c1" waits for a gate; others are unavailable until opened."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.available = False
        self.released: list[str] = []

    async def fail(self, claim: Any, _error: str) -> None:
        if claim.job.job_id == "c1":
            await self.gate.wait()
        elif not self.available:
            raise StoreUnavailable("etcd txn: timed out")
        self.released.append(claim.job.job_id)


def _claim(job_id: str) -> Any:
    return cast(Any, type("Claim", (), {"job": type("Job", (), {"job_id": job_id})()})())


async def test_two_workers_settling_at_once_release_each_kept_claim_once() -> None:
    # The review: with two workers, one's slow release of c1 ended after the
    # other had settled c1 and kept c2, and removing "the first entry" dropped
    # c2, whose lock then stayed on the live lease for good.
    queue = _SlowQueue()
    workers = ReplicationWorkers(
        "p1",
        cast(ReplicationQueue, queue),
        cast(Replicator, cast(Any, None)),
        list,
        ReplicationMetrics(CollectorRegistry()),
    )
    c1, c2 = _claim("c1"), _claim("c2")
    workers._unsettled.append((c1, "boom"))
    first = asyncio.create_task(workers._settle())
    second = asyncio.create_task(workers._settle())
    await asyncio.sleep(0)
    assert await workers._release(c2, "boom") is False  # kept meanwhile
    queue.gate.set()
    await asyncio.gather(first, second)
    assert queue.released == ["c1"]
    assert [c.job.job_id for c, _e in workers._unsettled] == ["c2"]
    queue.available = True
    await workers._settle()
    assert queue.released == ["c1", "c2"] and workers._unsettled == []
