"""Queueing jobs inside a caller's txn (ReplicationQueue.prepare_enqueue)."""

from __future__ import annotations

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobType, ReplicationQueue

KEYS = Keyspace("unit")


def make_queue() -> tuple[MemoryStore, ReplicationQueue]:
    clock = ManualClock()
    store = MemoryStore(clock)
    return store, ReplicationQueue(store, KEYS, clock=clock)


async def test_prepared_jobs_are_queued_by_the_callers_txn() -> None:
    store, queue = make_queue()
    jobs = [
        queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1"),
        queue.new_job(JobType.CREATE, "vs", 1, "r.git", "n3", source_node="n1"),
    ]
    prepared = await queue.prepare_enqueue(jobs)
    assert prepared.queued == tuple(jobs) and not prepared.existing
    assert await queue.jobs() == []  # nothing written yet
    result = await store.txn(list(prepared.compares), list(prepared.ops))
    assert result.succeeded
    stored = {(j.target_node, j.type, j.source_node) for j in await queue.jobs()}
    assert stored == {("n2", JobType.UPDATE, "n1"), ("n3", JobType.CREATE, "n1")}


async def test_an_identical_pending_job_is_not_queued_again() -> None:
    _, queue = make_queue()
    first = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    same = queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    other_source = queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n3")
    prepared = await queue.prepare_enqueue([same, other_source])
    assert [j.job_id for j in prepared.existing] == [first.job_id]
    assert prepared.queued == (other_source,)
    assert len(prepared.ops) == 1


async def test_two_identical_requests_queue_one_job() -> None:
    _, queue = make_queue()
    a = queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    b = queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    prepared = await queue.prepare_enqueue([a, b])
    assert prepared.queued == (a,)
    assert len(prepared.ops) == 1


async def test_a_job_queued_after_the_read_fails_the_callers_txn() -> None:
    store, queue = make_queue()
    job = queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    prepared = await queue.prepare_enqueue([job])
    # Someone queues the identical job between the read and the txn: the
    # de-duplication must not be bypassed.
    await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    result = await store.txn(list(prepared.compares), list(prepared.ops))
    assert not result.succeeded
    assert len(await queue.jobs()) == 1


async def test_a_job_for_another_replica_does_not_fail_the_txn() -> None:
    store, queue = make_queue()
    prepared = await queue.prepare_enqueue(
        [queue.new_job(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")]
    )
    await queue.enqueue(JobType.UPDATE, "vs", 2, "s.git", "n2", source_node="n1")
    assert (await store.txn(list(prepared.compares), list(prepared.ops))).succeeded


async def test_nothing_to_queue_reads_nothing() -> None:
    store, queue = make_queue()
    before = store.calls
    prepared = await queue.prepare_enqueue([])
    assert not prepared.ops and not prepared.compares
    assert store.calls == before
