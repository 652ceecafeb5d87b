"""Claims whose txn answer was lost, with several workers on one lease.

A proxy's replication workers share one lease. When etcd applies two workers'
claims but both answers are lost, each worker must adopt its own claim on its
next call: neither may adopt the other's (two replications of one target at
once), and no claim may be forgotten (its lock, bound to a lease that stays
alive, would keep its job from ever running again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobState, JobType, ReplicationQueue
from gitquorum.cluster.store import Op, TxnResult

KEYS = Keyspace("unit")


@dataclass
class Worker:
    name: str
    lease_id: int


class AnswerLosingStore(MemoryStore):
    """Applies lease-bound txns (claims) but loses the next ``lose`` answers, and
    yields after every txn so concurrent workers interleave at each await."""

    lose = 0
    unreachable = False

    async def txn(
        self, compares: Sequence[object], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if self.unreachable:
            raise StoreUnavailable("etcd unreachable")
        result = await super().txn(compares, success, failure)  # type: ignore[arg-type]
        if self.lose and compares and any(op.lease for op in success):
            self.lose -= 1
            raise StoreUnavailable("answer lost")
        await asyncio.sleep(0)
        return result


async def _two_lost_claims() -> tuple[AnswerLosingStore, ReplicationQueue, Worker, Worker]:
    clock = ManualClock()
    store = AnswerLosingStore(clock)
    queue = ReplicationQueue(store, KEYS, max_attempts=3, clock=clock)
    for repository_id in (1, 2):
        await queue.enqueue(
            JobType.UPDATE, "vs", repository_id, f"r{repository_id}.git", "n2", source_node="n1"
        )
    lease = await store.grant(10.0)
    first, second = Worker("proxy/0", lease.id), Worker("proxy/1", lease.id)
    store.lose = 2
    outcomes = await asyncio.gather(
        queue.claim_next(first), queue.claim_next(second), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    return store, queue, first, second


async def test_each_worker_adopts_its_own_lost_claim() -> None:
    _store, queue, first, second = await _two_lost_claims()
    adopted = await asyncio.gather(queue.claim_next(first), queue.claim_next(second))
    assert all(claim is not None for claim in adopted), adopted
    ids = sorted(claim.job.repository_id for claim in adopted if claim is not None)
    # Both jobs adopted once each: no job twice, none stranded.
    assert ids == [1, 2]
    states = {job.repository_id: job.state for job in await queue.jobs()}
    assert states == {1: JobState.IN_PROGRESS, 2: JobState.IN_PROGRESS}


async def test_a_lost_claim_survives_another_outage_while_it_is_resolved() -> None:
    store, queue, first, _second = await _two_lost_claims()
    store.unreachable = True
    try:
        await queue.claim_next(first)
    except StoreUnavailable:
        pass
    else:
        raise AssertionError("claim_next succeeded while etcd was unreachable")
    store.unreachable = False
    claim = await queue.claim_next(first)
    assert claim is not None and claim.job.worker == first.name
