"""Queueing repairs: one job per repair, identical pending jobs not repeated."""

from __future__ import annotations

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import Repair
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobType, ReplicationQueue
from gitquorum.cluster.repair_jobs import queue_repairs
from gitquorum.cluster.repositories import RepositoryRecord

KEYS = Keyspace("unit")


async def test_queue_repairs_writes_one_job_per_repair_once() -> None:
    queue = ReplicationQueue(MemoryStore(ManualClock()), KEYS)
    record = RepositoryRecord(5, "vs", "r.git", "n1", ("n1", "n2", "n3"), 2, ((("n1", 2)),))
    needed = (Repair(JobType.CREATE, "n2", "n1"), Repair(JobType.UPDATE, "n3", "n1"))
    jobs = await queue_repairs(queue, record, needed, correlation_id="c1")
    again = await queue_repairs(queue, record, needed)
    assert [j.job_id for j in again] == [j.job_id for j in jobs]
    stored = sorted(await queue.jobs(), key=lambda j: j.target_node)
    assert [(j.type, j.target_node, j.source_node, j.repository_id) for j in stored] == [
        (JobType.CREATE, "n2", "n1", 5),
        (JobType.UPDATE, "n3", "n1", 5),
    ]
    assert {j.relative_path for j in stored} == {"r.git"}
    assert {j.correlation_id for j in stored} == {"c1"}
    assert await queue_repairs(queue, record, ()) == []
