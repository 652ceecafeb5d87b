"""Routing policy: pure functions from a repository record and node health to a route."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from gitquorum.cluster.decisions import up_to_date_replicas
from gitquorum.cluster.repositories import MISSING, RepositoryRecord
from gitquorum.errors import FailedPrecondition, Unavailable
from gitquorum.proxy.routes import AccessorRoute, MaintenanceRoute, MutatorRoute, RemoveRoute

PRIMARY_ONLY_HEADER = "gitaly-route-repository-accessor-policy"
# Reads that must see the primary's view (sizes differ between packings).
FORCE_PRIMARY = frozenset({"/gitaly.RepositoryService/RepositorySize"})


def _assigned(repo: RepositoryRecord, configured: Sequence[str]) -> list[str]:
    # An empty assignment means every configured node holds a replica.
    nodes = repo.assigned or frozenset(configured)
    return [n for n in configured if n in nodes]


def route_accessor(
    repo: RepositoryRecord,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    primary_only: bool = False,
    choose: Callable[[Sequence[str]], str] = random.choice,
    draining: frozenset[str] = frozenset(),
) -> AccessorRoute:
    up_to_date = up_to_date_replicas(repo)
    if primary_only:
        primary = repo.primary
        if primary is None or primary not in healthy:
            raise Unavailable(f"repository unavailable: primary {primary or ''} is not healthy")
        if primary not in up_to_date:
            raise Unavailable("repository unavailable: primary is not up to date")
        return AccessorRoute(repo.repository_id, repo.replica_path, primary, "primary-only")
    candidates = [n for n in _assigned(repo, configured) if n in healthy and n in up_to_date]
    preferred = [n for n in candidates if n not in draining] or candidates
    if not preferred:
        raise Unavailable(
            f"repository unavailable: no healthy, up-to-date replica of {repo.relative_path!r}"
        )
    return AccessorRoute(repo.repository_id, repo.replica_path, choose(preferred), "distributed")


def route_mutator(
    repo: RepositoryRecord,
    healthy: frozenset[str],
    configured: Sequence[str],
    *,
    transactional: bool = True,
) -> MutatorRoute:
    primary = repo.primary
    if primary is None or primary not in healthy:
        raise Unavailable(f"repository unavailable: primary {primary or ''} is not healthy")
    up_to_date = up_to_date_replicas(repo)
    if primary not in up_to_date:
        raise FailedPrecondition("repository is in read-only mode: primary is not up to date")
    assigned = _assigned(repo, configured)
    secondaries = tuple(n for n in assigned if n != primary and n in healthy and n in up_to_date)
    if not transactional:
        secondaries_for_write: tuple[str, ...] = ()
        targets = tuple(n for n in assigned if n != primary)
    else:
        secondaries_for_write = secondaries
        targets = tuple(n for n in assigned if n != primary and n not in secondaries)
    return MutatorRoute(
        repository_id=repo.repository_id,
        replica_path=repo.replica_path,
        primary=primary,
        secondaries=secondaries_for_write,
        replication_targets=targets,
        transactional=transactional,
        generation=repo.generation,
    )


def route_creation(
    repository_id: int,
    replica_path: str,
    primary: str,
    assigned: Sequence[str],
    healthy: frozenset[str],
) -> MutatorRoute:
    """A new repository: write to the healthy assigned nodes, queue the rest."""
    if primary not in healthy:
        raise Unavailable("no healthy node to create the repository on")
    secondaries = tuple(n for n in assigned if n != primary and n in healthy)
    targets = tuple(n for n in assigned if n != primary and n not in healthy)
    return MutatorRoute(
        repository_id=repository_id,
        replica_path=replica_path,
        primary=primary,
        secondaries=secondaries,
        replication_targets=targets,
        transactional=True,
        generation=-1,
        creates=True,
    )


def route_maintenance(
    repo: RepositoryRecord, healthy: frozenset[str], configured: Sequence[str]
) -> MaintenanceRoute:
    nodes = tuple(
        n
        for n in _assigned(repo, configured)
        if n in healthy and repo.replica_generation(n) > MISSING
    )
    if not nodes:
        raise Unavailable("repository unavailable: no healthy replica for maintenance")
    return MaintenanceRoute(repo.repository_id, repo.replica_path, nodes)


def route_removal(repo: RepositoryRecord, configured: Sequence[str]) -> RemoveRoute:
    present = repo.replica_nodes
    nodes = tuple(n for n in configured if n in present or n in repo.assigned)
    return RemoveRoute(repo.repository_id, repo.replica_path, nodes)
