"""Queueing the repairs a repository needs: the one place that turns decisions into jobs.

What to repair is decided by ``decisions.repairs``; this only writes the jobs,
so every caller (the finalizer, the reconciler, the verifier, the info
service) queues them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from gitquorum.cluster.decisions import Repair
from gitquorum.cluster.queue import EnqueueTxn, ReplicationJob, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryRecord


async def queue_repairs(
    queue: ReplicationQueue,
    record: RepositoryRecord,
    repairs: Iterable[Repair],
    *,
    correlation_id: str = "",
) -> list[ReplicationJob]:
    """Queue one job per repair of ``record`` (the queue de-duplicates identical
    pending jobs); returns the jobs. Raises StoreUnavailable when etcd cannot
    be reached: the jobs before it are queued, the rest are not."""
    jobs = []
    for repair in repairs:
        jobs.append(
            await queue.enqueue(
                repair.kind,
                record.virtual_storage,
                record.repository_id,
                record.relative_path,
                repair.target,
                source_node=repair.source,
                correlation_id=correlation_id,
            )
        )
    return jobs


async def prepare_repairs(
    queue: ReplicationQueue,
    record: RepositoryRecord,
    repairs: Iterable[Repair],
    *,
    correlation_id: str = "",
) -> EnqueueTxn:
    """The compares and ops that queue ``repairs`` of ``record`` inside a caller's
    txn (de-duplicated against the pending jobs as :func:`queue_repairs` is)."""
    jobs = [
        queue.new_job(
            repair.kind,
            record.virtual_storage,
            record.repository_id,
            record.relative_path,
            repair.target,
            source_node=repair.source,
            correlation_id=correlation_id,
        )
        for repair in repairs
    ]
    return await queue.prepare_enqueue(jobs)
