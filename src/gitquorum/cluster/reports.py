"""Pure reports over repository records for operators and metrics.

Which repositories are unavailable or partially replicated (``dataloss``), the
state of each replica, and per-node counts of outdated replicas and generation
lag. They read the same rules the cluster decides by (``decisions``), so a
report never disagrees with what failover or the reconciler will do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from gitquorum.cluster.decisions import outdated_replicas, valid_primaries
from gitquorum.cluster.repositories import MISSING, RepositoryRecord


def outdated_by_node(records: Iterable[RepositoryRecord]) -> dict[tuple[str, str], list[int]]:
    """(virtual storage, node) -> ids of repositories whose replica there is outdated."""
    result: dict[tuple[str, str], list[int]] = {}
    for record in records:
        for node in outdated_replicas(record):
            result.setdefault((record.virtual_storage, node), []).append(record.repository_id)
    return result


def generation_lag_by_node(records: Iterable[RepositoryRecord]) -> dict[tuple[str, str], int]:
    """(virtual storage, node) -> the most generations any assigned replica there is behind.

    A missing replica counts as one generation more than the repository has
    (it lacks even the creation). Nodes with nothing behind report 0.
    """
    lag: dict[tuple[str, str], int] = {}
    for record in records:
        assigned = record.assigned or record.replica_nodes
        for node in assigned:
            generation = record.replica_generation(node)
            behind = (
                record.generation + 1 if generation == MISSING else record.generation - generation
            )
            key = (record.virtual_storage, node)
            lag[key] = max(lag.get(key, 0), behind)
    return lag


HealthyNodes = Mapping[str, AbstractSet[str]]


def conflicts_by_virtual_storage(records: Iterable[RepositoryRecord]) -> Counter[str]:
    """Repositories whose up-to-date replicas disagree with no majority, per virtual storage."""
    return Counter(record.virtual_storage for record in records if record.conflict)


def unavailable_by_virtual_storage(
    records: Iterable[RepositoryRecord], healthy: HealthyNodes
) -> Counter[str]:
    """Repositories with no valid primary, per virtual storage."""
    counts: Counter[str] = Counter()
    empty: frozenset[str] = frozenset()
    for record in records:
        if not valid_primaries(record, healthy.get(record.virtual_storage, empty)):
            counts[record.virtual_storage] += 1
    return counts


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    node: str
    generation: int
    behind_by: int
    assigned: bool
    healthy: bool
    valid_primary: bool


@dataclass(frozen=True, slots=True)
class DatalossEntry:
    record: RepositoryRecord
    # No healthy, up-to-date, assigned replica: neither reads nor writes are served.
    unavailable: bool
    replicas: tuple[ReplicaStatus, ...]

    @property
    def conflict(self) -> tuple[str, ...]:
        """Up-to-date replicas the verifier found different, with no majority."""
        return self.record.conflict


def replica_statuses(
    record: RepositoryRecord, healthy: AbstractSet[str]
) -> tuple[ReplicaStatus, ...]:
    nodes = dict.fromkeys((*record.assigned, *record.replica_nodes))
    valid = valid_primaries(record, healthy)
    statuses = []
    for node in nodes:
        generation = record.replica_generation(node)
        statuses.append(
            ReplicaStatus(
                node,
                generation,
                record.generation - generation,
                record.is_assigned(node),
                node in healthy,
                node in valid,
            )
        )
    return tuple(statuses)


def dataloss(
    records: Iterable[RepositoryRecord],
    healthy: HealthyNodes,
    *,
    include_partially_replicated: bool = False,
    virtual_storage: str | None = None,
) -> list[DatalossEntry]:
    """Unavailable repositories, those whose up-to-date replicas disagree with
    no majority (the verifier's conflict: always listed, nothing is repaired
    until an operator settles it) and, optionally, those with some assigned
    replica outdated or on an unhealthy node (partially replicated), sorted by path."""
    entries = []
    empty: frozenset[str] = frozenset()
    for record in records:
        if virtual_storage is not None and record.virtual_storage != virtual_storage:
            continue
        nodes = healthy.get(record.virtual_storage, empty)
        unavailable = not valid_primaries(record, nodes)
        partial = any(
            status.assigned and (status.behind_by > 0 or not status.healthy)
            for status in replica_statuses(record, nodes)
        )
        if unavailable or record.conflict or (include_partially_replicated and partial):
            entries.append(DatalossEntry(record, unavailable, replica_statuses(record, nodes)))
    entries.sort(key=lambda e: (e.record.virtual_storage, e.record.relative_path))
    return entries
