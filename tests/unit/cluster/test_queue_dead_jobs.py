"""Dead replication jobs: one per replica, retried with a capped backoff, removed by a success."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import (
    DEAD_RETRY_BASE,
    DEAD_RETRY_CAP,
    ClaimedJob,
    JobState,
    JobType,
    QueueView,
    ReplicationJob,
    ReplicationQueue,
    encode_job,
)
from gitquorum.cluster.store import Op

KEYS = Keyspace("unit")


@dataclass
class Worker:
    name: str
    lease_id: int


async def setup(view: bool = False) -> tuple[ManualClock, ReplicationQueue, Worker]:
    clock = ManualClock()
    store = MemoryStore(clock)
    queue_view = QueueView(store, KEYS) if view else None
    if queue_view is not None:
        await queue_view.start()
    queue = ReplicationQueue(store, KEYS, max_attempts=3, backoff=1.0, clock=clock, view=queue_view)
    return clock, queue, Worker("w", (await store.grant(10**9)).id)


async def claim(queue: ReplicationQueue, worker: Worker) -> ClaimedJob:
    if queue.view is not None:
        assert isinstance(queue.store, MemoryStore)
        await queue.view.wait_for_revision(queue.store.revision)
    claimed = await queue.claim_next(worker)
    assert claimed is not None
    return claimed


async def kill(
    clock: ManualClock, queue: ReplicationQueue, worker: Worker, job: ReplicationJob
) -> ReplicationJob:
    """Fail ``job`` until it is dead (nothing else runnable on its replica)."""
    while True:
        claimed = await claim(queue, worker)
        assert claimed.job.job_id == job.job_id
        failed = await queue.fail(claimed, "No space left on device")
        if failed.state is JobState.DEAD:
            return failed
        clock.advance(failed.not_before - clock.now())


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        pytest.param(3, DEAD_RETRY_BASE, id="first death: the base"),
        pytest.param(4, 2 * DEAD_RETRY_BASE, id="second: doubled"),
        pytest.param(5, 4 * DEAD_RETRY_BASE, id="third: doubled again"),
        pytest.param(8, 32 * DEAD_RETRY_BASE, id="sixth: 32 minutes"),
        pytest.param(9, DEAD_RETRY_CAP, id="seventh: capped at an hour"),
        pytest.param(10**6, DEAD_RETRY_CAP, id="years of retries: still the cap"),
        pytest.param(1, DEAD_RETRY_BASE, id="made dead early (recovery): the base"),
    ],
)
def test_dead_backoff(attempts: int, delay: float) -> None:
    queue = ReplicationQueue(MemoryStore(ManualClock()), KEYS, max_attempts=3)
    assert queue.dead_backoff_for(attempts) == delay


def test_retry_constants_are_a_minute_and_an_hour() -> None:
    assert (DEAD_RETRY_BASE, DEAD_RETRY_CAP) == (60.0, 3600.0)


@pytest.mark.parametrize("view", [False, True], ids=["no view", "view"])
async def test_a_dead_job_is_retried_after_its_backoff_and_a_success_removes_it(
    view: bool,
) -> None:
    clock, queue, worker = await setup(view)
    job = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    dead = await kill(clock, queue, worker, job)
    assert dead.not_before == clock.now() + DEAD_RETRY_BASE
    clock.advance(DEAD_RETRY_BASE - 1)
    assert await queue.claim_next(worker) is None  # still backing off
    clock.advance(1)
    again = await claim(queue, worker)
    assert (again.job.job_id, again.job.attempts) == (job.job_id, 4)
    dead = await queue.fail(again, "still full")
    assert dead.state is JobState.DEAD
    assert dead.not_before == clock.now() + 2 * DEAD_RETRY_BASE
    clock.advance(2 * DEAD_RETRY_BASE)
    await queue.ack(await claim(queue, worker))
    assert await queue.jobs() == []
    if queue.view is not None:
        await queue.view.close()


async def test_a_second_death_on_the_replica_absorbs_the_first() -> None:
    clock, queue, worker = await setup()
    first = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    first_dead = await kill(clock, queue, worker, first)
    # Another job for the same replica (a write, another source), and an
    # unrelated replica's dead job that must stay.
    clock.advance(10)
    other = await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "n2", source_node="n1")
    await kill(clock, queue, worker, other)
    second = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n3")
    # The pending job runs before the dead one's retry.
    merged = await kill(clock, queue, worker, second)
    jobs = {(j.repository_id, j.job_id): j for j in await queue.jobs()}
    assert sorted(jobs) == sorted([(1, second.job_id), (2, other.job_id)])
    survivor = jobs[(1, second.job_id)]
    assert survivor.state is JobState.DEAD
    # One more death than the absorbed job had: the backoff goes on growing.
    assert survivor.attempts == merged.attempts == first_dead.attempts + 1
    assert merged.not_before == clock.now() + 2 * DEAD_RETRY_BASE
    # It tells since when the replica's repair has been failing.
    assert survivor.created_at == first.created_at


@pytest.mark.parametrize(
    ("dead_kind", "dead_source", "done_kind", "done_source", "removed"),
    [
        pytest.param(JobType.UPDATE, "n1", JobType.UPDATE, "n1", True, id="same change"),
        pytest.param(JobType.UPDATE, "n1", JobType.UPDATE, "n3", True, id="other source"),
        pytest.param(JobType.CREATE, "n1", JobType.UPDATE, "n3", True, id="create by update"),
        pytest.param(
            JobType.DELETE_REPLICA, None, JobType.UPDATE, "n1", False, id="a repair keeps a delete"
        ),
        pytest.param(
            JobType.UPDATE, "n1", JobType.DELETE_REPLICA, None, False, id="a delete keeps a repair"
        ),
        pytest.param(
            JobType.DELETE_REPLICA, None, JobType.DELETE_REPLICA, None, True, id="delete by delete"
        ),
    ],
)
async def test_a_later_success_on_the_replica_removes_its_dead_job(
    dead_kind: JobType,
    dead_source: str | None,
    done_kind: JobType,
    done_source: str | None,
    removed: bool,
) -> None:
    clock, queue, worker = await setup()
    dead = await kill(
        clock,
        queue,
        worker,
        await queue.enqueue(dead_kind, "vs", 1, "r.git", "n2", source_node=dead_source),
    )
    fresh = await queue.enqueue(done_kind, "vs", 1, "r.git", "n2", source_node=done_source)
    claimed = await claim(queue, worker)
    assert claimed.job.job_id == fresh.job_id
    await queue.ack(claimed)
    left = [j.job_id for j in await queue.jobs()]
    assert left == ([] if removed else [dead.job_id])


async def test_a_dead_job_queued_while_dying_is_absorbed_on_the_retry() -> None:
    """The txn that makes a job dead is guarded by its replica's prefix: a job
    that dies meanwhile makes it read again instead of leaving two."""
    clock, queue, worker = await setup()
    first = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1")
    for _ in range(2):
        failed = await queue.fail(await claim(queue, worker), "full")
        clock.advance(failed.not_before - clock.now())
    last = await claim(queue, worker)
    # Between its read and its txn, a dead job of the same replica appears (as
    # the recovery of another proxy's orphan would leave it).
    intruder = ReplicationJob(
        "zzintruder", JobType.UPDATE, "vs", 1, "r.git", "n2", "n3", JobState.DEAD, 3
    )
    real_txn = queue.store.txn
    injected = False

    async def txn(compares: Any, ops: Any) -> Any:
        nonlocal injected
        if compares and not injected and any(op.key.endswith(first.job_id) for op in ops):
            injected = True
            await real_txn([], [Op.put(queue._key(intruder), encode_job(intruder))])
        return await real_txn(compares, ops)

    queue.store.txn = txn  # type: ignore[method-assign]
    dead = await queue.fail(last, "full")
    assert injected
    jobs = await queue.jobs()
    assert [(j.job_id, j.state) for j in jobs] == [(first.job_id, JobState.DEAD)]
    assert dead.attempts == 4  # the intruder's death counted


async def test_orphan_recovery_of_a_job_out_of_attempts_absorbs_the_dead_one() -> None:
    clock, queue, worker = await setup()
    store = queue.store
    old = await kill(
        clock,
        queue,
        worker,
        await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n1"),
    )
    fresh = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n2", source_node="n3")
    for _ in range(2):
        failed = await queue.fail(await claim(queue, worker), "full")
        clock.advance(failed.not_before - clock.now())
    # The third attempt's worker dies holding the claim.
    crashed = Worker("crashed", (await store.grant(5)).id)
    assert (await claim(queue, crashed)).job.job_id == fresh.job_id
    clock.advance(6)
    assert await queue.recover_orphans() == 1
    jobs = await queue.jobs()
    assert [(j.job_id, j.state, j.attempts) for j in jobs] == [
        (fresh.job_id, JobState.DEAD, old.attempts + 1)
    ]


# -- dead jobs left by older versions (one per reconciler pass) ----------------------------

LEGACY = 300  # more than etcd's 128 operations per txn, more than two batches


async def legacy_dead_jobs(queue: ReplicationQueue, count: int = LEGACY) -> list[ReplicationJob]:
    jobs = [
        ReplicationJob(
            f"{i:011x}aaaaaa", JobType.UPDATE, "vs", 1, "r.git", "n2", "n1", JobState.DEAD, 3
        )
        for i in range(count)
    ]
    for job in jobs:
        await queue.store.put(queue._key(job), encode_job(job))
    return jobs


@pytest.mark.parametrize("view", [False, True], ids=["no view", "view"])
async def test_a_success_removes_hundreds_of_legacy_dead_jobs(view: bool) -> None:
    clock, queue, worker = await setup(view)
    await legacy_dead_jobs(queue)
    # Another replica's dead job, not due yet, stays.
    other = await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "n2", source_node="n1")
    other = replace(
        other, state=JobState.DEAD, attempts=3, not_before=clock.now() + 10**6, delay=10**6
    )
    await queue.store.put(queue._key(other), encode_job(other))
    clock.advance(1)
    claimed = await claim(queue, worker)
    assert claimed.job.repository_id == 1
    await queue.ack(claimed)
    assert [j.job_id for j in await queue.jobs()] == [other.job_id]
    assert not (await queue.store.get_prefix(KEYS.locks())).kvs, "the claim's lock is held"
    if queue.view is not None:
        await queue.view.close()


async def test_a_death_absorbs_hundreds_of_legacy_dead_jobs() -> None:
    clock, queue, worker = await setup()
    await legacy_dead_jobs(queue)
    clock.advance(1)
    claimed = await claim(queue, worker)
    dead = await queue.fail(claimed, "still full")
    jobs = await queue.jobs()
    assert [(j.job_id, j.state) for j in jobs] == [(claimed.job.job_id, JobState.DEAD)]
    assert dead.attempts == 4
    assert not (await queue.store.get_prefix(KEYS.locks())).kvs, "the claim's lock is held"


async def test_orphan_recovery_absorbs_legacy_dead_jobs_and_goes_on_after_an_error() -> None:
    clock, queue, _worker = await setup()
    store = queue.store
    await legacy_dead_jobs(queue)
    healthy = await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "n2", source_node="n1")
    crashed = Worker("crashed", (await store.grant(5)).id)
    clock.advance(1)
    # The crashed worker held a legacy dead job's retry (its fourth attempt) and
    # a job of another replica.
    first = await claim(queue, crashed)
    second = await claim(queue, crashed)
    assert {first.job.repository_id, second.job.repository_id} == {1, 2}
    clock.advance(6)
    # The first job's txn meets an etcd error: the other job is still recovered.
    real_txn = store.txn
    broken = {first.job.job_id}

    async def txn(compares: Any, ops: Any, failure: Any = ()) -> Any:
        if any(op.key.endswith(job_id) for op in ops for job_id in broken):
            broken.clear()
            raise StoreUnavailable("etcd txn: UNAVAILABLE (injected)")
        return await real_txn(compares, ops, failure)

    store.txn = txn  # type: ignore[method-assign]
    assert await queue.recover_orphans() == 1
    assert await queue.recover_orphans() == 1  # the next pass does the first one
    jobs = {j.repository_id: j for j in await queue.jobs()}
    assert len(await queue.jobs()) == 2, "legacy dead jobs left behind"
    assert jobs[1].state is JobState.DEAD
    assert (jobs[2].job_id, jobs[2].state) == (healthy.job_id, JobState.READY)


async def test_leftover_dead_jobs_are_deleted_in_bounded_txns() -> None:
    """Every txn the queue sends stays within etcd's limit, however many dead
    jobs a replica holds."""
    clock, queue, worker = await setup()
    await legacy_dead_jobs(queue, 1000)
    clock.advance(1)
    claimed = await claim(queue, worker)
    await queue.ack(claimed)
    assert await queue.jobs() == []


@pytest.mark.parametrize("targets", [1, 64, 65, 300])
async def test_a_claim_among_many_targets_stays_within_etcds_txn_limit(targets: int) -> None:
    """Without a view a claim reads each target's jobs and locks; with many
    nodes that read would exceed etcd's 128 operations per txn."""
    _clock, queue, worker = await setup()
    job = await queue.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n0", source_node="x")
    await queue.enqueue(JobType.UPDATE, "vs", 2, "r.git", "other", source_node="x")
    chosen = [("vs", f"n{i}") for i in range(targets)]
    claimed = await queue.claim_next(worker, targets=chosen)
    assert claimed is not None and claimed.job.job_id == job.job_id
    # Only the targets asked for: the other node's job is left alone.
    assert await queue.claim_next(worker, targets=chosen) is None
