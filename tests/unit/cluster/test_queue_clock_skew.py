"""Replication jobs when the proxies' wall clocks differ.

``not_before`` is written on the queuing (or failing) proxy's wall clock and
read on the claiming proxy's. A job queued by a proxy whose clock runs ten
minutes ahead must still run at once elsewhere, a proxy whose clock runs
behind must still run the others' jobs, and a backoff written by a skewed
proxy lasts the backoff, not the backoff plus the skew.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import (
    WAITING_SEEN_MIN,
    ClaimedJob,
    JobState,
    JobType,
    ReplicationJob,
    ReplicationQueue,
)

KEYS = Keyspace("unit")
SKEW = 600.0


@dataclass
class Worker:
    name: str
    lease_id: int


async def queues(
    store: MemoryStore, offset: float, **kwargs: Any
) -> tuple[ReplicationQueue, ReplicationQueue]:
    """(a proxy ``offset`` seconds off, a proxy on time), sharing one store."""
    off = ReplicationQueue(store, KEYS, clock=lambda: time.time() + offset, **kwargs)
    on = ReplicationQueue(store, KEYS, clock=time.time, **kwargs)
    return off, on


async def claim_within(queue: ReplicationQueue, worker: Worker, seconds: float) -> ClaimedJob:
    deadline = time.monotonic() + seconds
    while True:
        claimed = await queue.claim_next(worker)
        if claimed is not None:
            return claimed
        assert time.monotonic() < deadline, f"no job became claimable within {seconds}s"
        await asyncio.sleep(0.02)


async def test_a_job_queued_by_a_proxy_whose_clock_runs_ahead_runs_at_once_elsewhere() -> None:
    store = MemoryStore(ManualClock())
    ahead, on_time = await queues(store, +SKEW)
    await ahead.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n3", source_node="n1")
    worker = Worker("p2/0", (await store.grant(10**6)).id)
    claimed = await on_time.claim_next(worker)
    assert claimed is not None, "the job waits for the queuing proxy's clock: ten minutes"


async def test_a_proxy_whose_clock_runs_behind_runs_the_others_jobs_at_once() -> None:
    store = MemoryStore(ManualClock())
    behind, on_time = await queues(store, -SKEW)
    await on_time.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n3", source_node="n1")
    worker = Worker("p3/0", (await store.grant(10**6)).id)
    claimed = await behind.claim_next(worker)
    assert claimed is not None, "the job waits ten minutes on the slow proxy's clock"


async def test_a_backoff_set_by_a_proxy_whose_clock_runs_ahead_lasts_the_backoff() -> None:
    store = MemoryStore(ManualClock())
    ahead, on_time = await queues(store, +SKEW, backoff=0.2)
    await ahead.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n3", source_node="n1")
    first = await ahead.claim_next(Worker("p1/0", (await store.grant(10**6)).id))
    assert first is not None
    failed = await ahead.fail(first, "connection refused")
    assert failed.state is JobState.FAILED
    worker = Worker("p2/0", (await store.grant(10**6)).id)
    assert await on_time.claim_next(worker) is None, "the backoff is not over yet"
    claimed = await claim_within(on_time, worker, 3.0)
    assert claimed.job.job_id == first.job.job_id


async def test_a_dead_job_made_due_by_a_leader_whose_clock_runs_ahead_is_due_everywhere() -> None:
    store = MemoryStore(ManualClock())
    ahead, on_time = await queues(store, +SKEW, max_attempts=1)
    await on_time.enqueue(JobType.UPDATE, "vs", 1, "r.git", "n3", source_node="n1")
    worker = Worker("p2/0", (await store.grant(10**6)).id)
    first = await on_time.claim_next(worker)
    assert first is not None
    dead = await on_time.fail(first, "No space left on device")
    assert dead.state is JobState.DEAD
    # The leader (ten minutes ahead) sees the target back: the dead job is due again.
    assert await ahead.retry_now(dead)
    claimed = await on_time.claim_next(worker)
    assert claimed is not None, "the retry waits for the leader's clock: ten minutes"


async def test_pruning_the_first_seen_map_never_restarts_a_waiting_jobs_delay() -> None:
    # A proxy whose wall clock runs far behind: the job below is due here only
    # by its delay counted on this proxy's monotonic clock since first seen.
    store = MemoryStore(ManualClock())
    mono = [0.0]
    behind = ReplicationQueue(
        store, KEYS, clock=lambda: time.time() - SKEW, monotonic=lambda: mono[0]
    )
    job = ReplicationJob(
        "j1", JobType.UPDATE, "vs", 1, "r.git", "n3", "n1", not_before=time.time() + 5, delay=5.0
    )
    now = time.time() - SKEW
    assert not behind._waited(now, [job])(job)  # first seen at 0
    # Many versions of other jobs seen since, all gone now, and a long time passed.
    behind._waiting_since.update({(f"gone/{i}", 1): 0.0 for i in range(WAITING_SEEN_MIN + 1)})
    mono[0] = 10_000.0
    assert behind._waited(now, [job])(job), "the prune forgot a waiting job: its delay restarted"
    assert len(behind._waiting_since) == 1
