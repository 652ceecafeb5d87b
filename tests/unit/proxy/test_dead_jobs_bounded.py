"""A replica whose repair fails forever must not grow the replication queue.

The real queue on the in-memory store and the leader's real reconciliation
pass, with time moved by hand: every pass the reconciler looks for outdated
replicas, and a worker runs whatever is runnable against a target that fails
every attempt (a full disk, say). The number of job keys in the store must stay
put however many passes go by, the dead job must keep being retried with a
growing, capped backoff, and a success must remove it.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gitquorum.cluster import queue as queue_module
from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobState, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.proxy.leader_tasks import LeaderTasks

KEYS = Keyspace("unit")
RECONCILE_INTERVAL = 30.0


class StaticHealth:
    def add_listener(self, _callback: Callable[[object, object], None]) -> None:
        pass

    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return frozenset({"n1", "n2", "n3"})


class StaticCache:
    def __init__(self, *records: RepositoryRecord) -> None:
        self._records = records

    def records(self, _virtual_storage: str | None = None) -> tuple[RepositoryRecord, ...]:
        return self._records


@dataclass
class Worker:
    name: str
    lease_id: int


# Repository 1: n2 is behind; repository 2: n3 has no replica yet.
BROKEN = (
    RepositoryRecord(1, "vs", "a.git", "n1", ("n1", "n2"), 5, (("n1", 5), ("n2", 4))),
    RepositoryRecord(2, "vs", "b.git", "n1", ("n1", "n3"), 1, (("n1", 1),)),
)


def leader(queue: ReplicationQueue) -> LeaderTasks:
    unused: Any = object()
    return LeaderTasks(
        unused,
        unused,
        StaticCache(*BROKEN),  # type: ignore[arg-type]
        StaticHealth(),  # type: ignore[arg-type]
        queue,
        unused,
        None,
        reconcile_interval=RECONCILE_INTERVAL,
    )


async def job_keys(store: MemoryStore) -> int:
    return len((await store.get_prefix(KEYS.jobs())).kvs)


async def run_jobs(
    queue: ReplicationQueue, worker: Worker, *, succeed: bool
) -> list[tuple[int, float]]:
    """Run every runnable job once; returns (repository id, time) of each attempt."""
    started = []
    while (claim := await queue.claim_next(worker)) is not None:
        started.append((claim.job.repository_id, queue.clock()))
        if succeed:
            await queue.ack(claim)
        else:
            await queue.fail(claim, "No space left on device")
    return started


async def reconcile_and_work(
    clock: ManualClock,
    tasks: LeaderTasks,
    worker: Worker,
    *,
    hours: float,
    succeed: bool,
    each_pass: Callable[[], Awaitable[None]] | None = None,
) -> list[tuple[int, float]]:
    """Reconciliation passes every RECONCILE_INTERVAL, the worker polling every second."""
    attempts = []
    for _ in range(int(hours * 3600 / RECONCILE_INTERVAL)):
        await tasks.reconcile_once()
        for _second in range(int(RECONCILE_INTERVAL)):
            attempts += await run_jobs(tasks.queue, worker, succeed=succeed)
            clock.advance(1.0)
        if each_pass is not None:
            await each_pass()
    return attempts


async def setup() -> tuple[ManualClock, MemoryStore, LeaderTasks, Worker]:
    clock = ManualClock()
    store = MemoryStore(clock)
    queue = ReplicationQueue(store, KEYS, max_attempts=3, backoff=1.0, clock=clock)
    worker = Worker("w", (await store.grant(10**9)).id)
    return clock, store, leader(queue), worker


async def test_a_permanently_failing_target_keeps_the_key_count_constant() -> None:
    clock, store, tasks, worker = await setup()
    counts: list[int] = []

    async def count() -> None:
        counts.append(await job_keys(store))

    await reconcile_and_work(clock, tasks, worker, hours=6, succeed=False, each_pass=count)
    # One job key per broken replica, from the first pass to the last (720 passes).
    assert len(counts) == 720
    assert max(counts) == len(BROKEN), f"job keys grew: {counts[:3]} ... {counts[-3:]}"
    assert set(counts) == {len(BROKEN)}
    jobs = await tasks.queue.jobs()
    assert sorted((j.repository_id, j.target_node, j.state) for j in jobs) == [
        (1, "n2", JobState.DEAD),
        (2, "n3", JobState.DEAD),
    ]


async def test_a_dead_job_is_retried_with_growing_capped_backoff_until_it_succeeds() -> None:
    base, cap = queue_module.DEAD_RETRY_BASE, queue_module.DEAD_RETRY_CAP
    clock, store, tasks, worker = await setup()
    attempts = await reconcile_and_work(clock, tasks, worker, hours=8, succeed=False)
    for repository_id in (1, 2):
        times = [t for rid, t in attempts if rid == repository_id]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Three quick attempts (1 s, then 2 s apart), then retries of the dead job.
        assert gaps[:2] == [1.0, 2.0]
        retries = gaps[2:]
        # Doubling from the base (attempts start on whole seconds, as the worker polls) ...
        assert retries == [min(cap, base * 2**i) for i in range(len(retries))], retries
        # ... up to the cap, which the last hours reached.
        assert retries[-3:] == [cap] * 3
    # The target is repaired (disk freed): the next retry succeeds and removes each job.
    await reconcile_and_work(clock, tasks, worker, hours=cap / 3600 + 0.1, succeed=True)
    assert await job_keys(store) == 0
