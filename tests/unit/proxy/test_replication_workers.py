"""Replication workers share one lease, however they race for it."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import ReplicationQueue
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
