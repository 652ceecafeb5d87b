"""Pure cluster decisions over immutable repository records and the health consensus.

Every caller that picks a primary, a replication source or the repairs a
repository needs asks these functions instead of deciding on its own, so the
leader, the write path, the operator commands, the verifier and the info
service cannot disagree. Nothing here does I/O: health, load, drained nodes
and pending jobs are inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from gitquorum.cluster.queue import JobState, JobType, ReplicationJob
from gitquorum.cluster.repositories import MISSING, RepositoryRecord

# -- replica states --------------------------------------------------------------


def up_to_date_replicas(record: RepositoryRecord) -> frozenset[str]:
    """Replicas at the repository's generation."""
    return frozenset(n for n, g in record.replicas if g == record.generation)


def valid_primaries(record: RepositoryRecord, healthy: AbstractSet[str]) -> frozenset[str]:
    """Nodes that may serve as primary: healthy, up to date and assigned."""
    return frozenset(
        n
        for n, g in record.replicas
        if g == record.generation and n in healthy and record.is_assigned(n)
    )


def primary_is_valid(record: RepositoryRecord, healthy: AbstractSet[str]) -> bool:
    """Whether the current primary may stay primary (no failover needed)."""
    return record.primary is not None and record.primary in valid_primaries(record, healthy)


def outdated_replicas(record: RepositoryRecord) -> tuple[str, ...]:
    """Assigned nodes whose replica is behind or missing."""
    assigned = record.assigned or record.replica_nodes
    return tuple(n for n in assigned if record.replica_generation(n) < record.generation)


# -- primary ------------------------------------------------------------------------


def prefer_undrained(nodes: AbstractSet[str], draining: AbstractSet[str]) -> frozenset[str]:
    """Drained nodes last: the nodes not drained, or all of them if every one is."""
    return frozenset(nodes - draining) or frozenset(nodes)


def primary_load(records: Iterable[RepositoryRecord]) -> dict[str, int]:
    """node -> how many of ``records`` it is primary of."""
    return dict(Counter(r.primary for r in records if r.primary))


def choose_primary(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    load: Mapping[str, int],
    draining: AbstractSet[str] = frozenset(),
    exclude: AbstractSet[str] = frozenset(),
) -> str | None:
    """The node that should be ``record``'s primary.

    The current primary while it is a valid primary and not in ``exclude``: a
    primary is never moved without need. Otherwise the valid primary (healthy,
    up to date, assigned) outside ``exclude`` that is not drained (drained ones
    only when nothing else is), least loaded first so that a failed node's
    primaries spread over the others, ties by name so that every proxy decides
    alike. None when no replica qualifies: the repository is unavailable and
    never served from an outdated replica.
    """
    valid = valid_primaries(record, healthy)
    if record.primary in valid and record.primary not in exclude:
        return record.primary
    candidates = prefer_undrained(valid - exclude, draining)
    if not candidates:
        return None
    return min(candidates, key=lambda n: (load.get(n, 0), n))


# -- replication source -----------------------------------------------------------------


def choose_source(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    target: str,
    preferred: str | None = None,
) -> str | None:
    """The replica ``target`` should replicate from, or None if none can serve.

    Any healthy, up-to-date replica other than the target holds every
    acknowledged write. Among them: ``preferred`` (the source a job was queued
    with), then the primary, then assigned replicas (they keep receiving
    writes), then by name.
    """
    candidates = (up_to_date_replicas(record) & healthy) - {target}
    if not candidates:
        return None
    if preferred in candidates:
        return preferred
    if record.primary in candidates:
        return record.primary
    return min(candidates, key=lambda n: (not record.is_assigned(n), n))


# -- repairs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repair:
    """One replication job a repository needs: bring ``target`` up to date from ``source``."""

    kind: JobType
    target: str
    source: str


# (virtual storage, target node, repository id) of a job still to run or running.
PendingKey = tuple[str, str, int]

# Failed jobs are retried by the queue: a new job would only duplicate them.
_PENDING_STATES = frozenset({JobState.READY, JobState.IN_PROGRESS, JobState.FAILED})


def pending_repairs(jobs: Iterable[ReplicationJob]) -> frozenset[PendingKey]:
    """The replicas a job is already queued for (dead jobs do not count)."""
    return frozenset(
        (j.virtual_storage, j.target_node, j.repository_id)
        for j in jobs
        if j.state in _PENDING_STATES
    )


def repairs(
    record: RepositoryRecord,
    healthy: AbstractSet[str],
    *,
    targets: Collection[str] | None = None,
    pending: AbstractSet[PendingKey] = frozenset(),
) -> tuple[Repair, ...]:
    """The replication jobs ``record`` needs, one per outdated assigned replica.

    ``targets`` limits them to those nodes (the replicas a write or a check
    found behind); a replica in ``pending`` already has a job. A target that is
    down still gets its job: workers hold it until the node is back, which then
    catches up at once instead of waiting for the next reconciliation. A
    replica that does not exist yet is created (CREATE), one that is behind is
    updated (UPDATE). Without a healthy, up-to-date source nothing can be
    repaired and nothing is queued.
    """
    found = []
    for node in outdated_replicas(record):
        if targets is not None and node not in targets:
            continue
        if (record.virtual_storage, node, record.repository_id) in pending:
            continue
        source = choose_source(record, healthy, target=node)
        if source is None:
            continue
        missing = record.replica_generation(node) == MISSING
        found.append(Repair(JobType.CREATE if missing else JobType.UPDATE, node, source))
    return tuple(found)
